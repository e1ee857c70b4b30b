"""Rate limits on the APIs and on redeeming codes: DRF throttles, their state in the shared cache
(Redis), so every web process counts the same requests.

Addresses are REMOTE_ADDR (DRF's NUM_PROXIES is 0): the ASGI layer puts the real client there
behind trusted proxies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from rest_framework.settings import api_settings
from rest_framework.throttling import (
    AnonRateThrottle,
    BaseThrottle,
    SimpleRateThrottle,
    UserRateThrottle,
)

from accounts.tiers import tier_of


class CurrentRate(SimpleRateThrottle):
    """Reads the scope's rate from the settings when a request comes, not once at import as DRF
    does, so an override (in tests, or a settings reload) takes effect."""

    def get_rate(self) -> str | None:
        rates = api_settings.DEFAULT_THROTTLE_RATES
        if self.scope not in rates:
            raise ImproperlyConfigured(f"No throttle rate set for scope {self.scope!r}")
        return cast("str | None", rates[self.scope])


class TierUserThrottle(CurrentRate, UserRateThrottle):
    """A member's API calls per minute: their tier's number, else the `user` rate setting.
    (Anonymous callers are counted by address at that rate; AnonAddressThrottle adds its own.)"""

    scope = "user"

    def allow_request(self, request: Any, view: Any) -> bool:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            per_minute = tier_of(user).api_requests_per_minute
            if per_minute:
                self.rate = f"{per_minute}/min"
                self.num_requests, self.duration = per_minute, 60
        return super().allow_request(request, view)


class RedeemUserThrottle(CurrentRate, UserRateThrottle):
    """Redeem attempts per member, right or wrong."""

    scope = "redeem_user"


class RedeemAddressThrottle(CurrentRate):
    """Redeem attempts per client address, whoever is logged in: many accounts on one address
    share it."""

    scope = "redeem_address"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AnonAddressThrottle(CurrentRate, AnonRateThrottle):
    """Anonymous calls per client address (views open to anonymous callers: the schema)."""


def refusal_wait(request: HttpRequest, throttles: Iterable[BaseThrottle]) -> int | None:
    """For views outside DRF: None when every throttle lets the request through, else the
    whole seconds to wait (for Retry-After). Every throttle counts the request, as DRF does."""
    # DRF's throttles read only request.user and request.META: a plain Django request serves.
    waits = [
        throttle.wait()
        for throttle in throttles
        if not throttle.allow_request(request, None)  # type: ignore[arg-type]
    ]
    if not waits:
        return None
    return max(1, math.ceil(max((w or 0) for w in waits)))


def api_refusal_wait(request: HttpRequest, user: Any) -> int | None:
    """The REST API's per-member limit, applied to a view that authenticates by itself (the
    A1111 API): same rate, same counter."""
    request.user = user
    return refusal_wait(request, [TierUserThrottle()])


def redeem_refusal_wait(request: HttpRequest) -> int | None:
    return refusal_wait(request, [RedeemUserThrottle(), RedeemAddressThrottle()])
