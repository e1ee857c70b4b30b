"""The client's real address, for everything downstream (axes, throttling, logs): REMOTE_ADDR.

Behind a reverse proxy every connection comes from the proxy. X-Forwarded-For is believed only
when the connection comes from an address in settings.TRUSTED_PROXIES, and then only up to the
first hop no trusted proxy vouches for (reading from the right: a client can put anything on the
left). From anyone else it is ignored. The header never reaches Django, so no code can read a
forged one by mistake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
FORWARDED_FOR = b"x-forwarded-for"


def parse_address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def is_trusted(address: Address | None, proxies: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in proxies)


def real_client(peer: str, forwarded_for: list[str], proxies: Sequence[Network]) -> str:
    """The peer itself, or the rightmost forwarded hop not added by a trusted proxy."""
    client = peer
    if not is_trusted(parse_address(client), proxies):
        return client
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            break  # unreadable: nothing left of it can be believed
        client = str(address)
        if not is_trusted(address, proxies):
            break
    return client


class ClientAddressFromProxy:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            kept, forwarded = [], []
            for name, value in scope.get("headers", []):
                if name.lower() == FORWARDED_FOR:
                    forwarded.append(value.decode("latin-1"))
                else:
                    kept.append((name, value))
            scope = {**scope, "headers": kept}
            peer = scope.get("client")
            if peer:  # a unix socket or a test may have none: nothing to resolve
                client = real_client(peer[0], forwarded, settings.TRUSTED_PROXIES)
                if client != peer[0]:
                    scope["client"] = [client, 0]
        return await self.app(scope, receive, send)


def remote_addr(request: Any) -> str | None:
    """For django-axes (AXES_CLIENT_IP_CALLABLE): the address resolved above, nothing else."""
    return request.META.get("REMOTE_ADDR")
