"""Rate limits on the APIs and on redeeming codes: DRF throttles, their state in the shared cache
(Redis), so every web process counts the same requests.

Addresses are REMOTE_ADDR (DRF's NUM_PROXIES is 0): the ASGI layer puts the real client there
behind trusted proxies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework.settings import api_settings
from rest_framework.throttling import (
    AnonRateThrottle,
    BaseThrottle,
    SimpleRateThrottle,
    UserRateThrottle,
)

from accounts.request_memo import remembered
from accounts.tiers import tier_of

log = logging.getLogger(__name__)


class WindowThrottle(SimpleRateThrottle):
    """DRF's rate throttle counting with one atomic increment in the shared cache per request.

    DRF's own keeps a list of timestamps that it reads, appends to and writes back: two web
    processes answering at the same moment both read the old list, and a burst spread over
    several processes passes the limit. Here a counter that Redis increments atomically starts
    with a caller's first request and expires `duration` later, so at most `num_requests` pass
    in that window wherever they land; refused requests count too. The rate is read from the
    settings per request, not once at import."""

    # Set by SimpleRateThrottle.__init__ from the rate (its stubs leave them out).
    num_requests: int
    duration: int
    window_start_ms: int = 0

    def get_rate(self) -> str | None:
        rates = api_settings.DEFAULT_THROTTLE_RATES
        if self.scope not in rates:
            raise ImproperlyConfigured(f"No throttle rate set for scope {self.scope!r}")
        return cast("str | None", rates[self.scope])

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        count, self.window_start_ms = count_in_window(
            self.cache, self.key, self.duration, int(self.now * 1000)
        )
        return count <= self.num_requests

    def wait(self) -> float:
        return max(0.0, self.window_start_ms / 1000 + self.duration - self.now)


def count_in_window(cache: Any, key: str, window_seconds: int, now_ms: int) -> tuple[int, int]:
    """Count one more call in `key`'s window in Django's Redis cache: (calls so far, the
    window's start in ms). A window opens at the first call and closes `window_seconds` later,
    atomically in one round trip (a counter checked, then incremented, could outlive its
    expiry and count for ever). Redis unreachable: (0, now_ms), nothing counted: the limits
    fail open, as the cache does (config/cache.py)."""
    counter = cache.make_and_validate_key(key)
    start = cache.make_and_validate_key(f"{key}:start")
    try:
        client = cache._cache.get_client(counter, write=True)
        count, started = client.eval(
            _COUNT_IN_WINDOW, 2, counter, start, window_seconds * 1000, now_ms
        )
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("rate limit not counted, Redis unreachable: %s", exc)
        return 0, now_ms
    return int(count), int(started)


# KEYS: the counter, its window's start; ARGV: window ms, now ms.
_COUNT_IN_WINDOW = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
  return {count, tonumber(ARGV[2])}
end
return {count, tonumber(redis.call('GET', KEYS[2]) or ARGV[2])}
"""


class TierUserThrottle(WindowThrottle, UserRateThrottle):
    """A member's API calls per minute: their tier's number, else the `user` rate setting.
    (Anonymous callers are counted by address at that rate; AnonAddressThrottle adds its own.)"""

    scope = "user"

    def allow_request(self, request: Any, view: Any) -> bool:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if (tier := remembered(user.pk)) is not None:  # read with the API token
                per_minute = tier.api_requests_per_minute
            else:
                # Kept a minute in the cache: one Redis read per call instead of a query.
                per_minute = self.cache.get_or_set(
                    f"api_rate_of_{user.pk}", lambda: tier_of(user).api_requests_per_minute, 60
                )
            if per_minute:
                self.rate = f"{per_minute}/min"
                self.num_requests, self.duration = per_minute, 60
        return super().allow_request(request, view)


class RedeemUserThrottle(WindowThrottle, UserRateThrottle):
    """Redeem attempts per member, right or wrong."""

    scope = "redeem_user"


class RedeemAddressThrottle(WindowThrottle):
    """Redeem attempts per client address, whoever is logged in: many accounts on one address
    share it."""

    scope = "redeem_address"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AnonAddressThrottle(WindowThrottle, AnonRateThrottle):
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


class ModelUploadThrottle(WindowThrottle, UserRateThrottle):
    """Resumable model upload requests (one per chunk) per member."""

    scope = "model_upload"
