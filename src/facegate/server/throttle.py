"""Limits per client address: backoff after failed authentication, and a rate for commands.

Both keep a bounded amount of state (at most `MAX_KEYS` addresses, the oldest forgotten
first) and take an injected clock, so a flood from many addresses cannot grow memory and
tests need not sleep.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec

MAX_KEYS = 10_000


class FailureWindow(msgspec.Struct):
    """Failures of one address within one audit window (written as one audit row)."""

    client: str
    started: float  # wall-clock time of the first failure in the window
    failures: int = 0
    throttled: int = 0  # requests refused with 429 while the address was blocked
    paths: list[str] = msgspec.field(default_factory=list)


class AuthThrottle:
    """After `limit` failed authentications within `window` seconds an address is answered
    429 (with Retry-After) until the oldest of them is `window` seconds old.

    Failures are also counted per address per `window` for the audit log: one row per
    address per minute with the count, instead of one row per attempt (`drain`)."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.wall = wall
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()
        self._audit: OrderedDict[str, tuple[float, FailureWindow]] = OrderedDict()
        self._done: list[FailureWindow] = []

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it is not blocked."""
        recent = self._recent.get(client)
        if recent is None:
            return None
        now = self.clock()
        while recent and now - recent[0] >= self.window:
            recent.popleft()
        if len(recent) < self.limit:
            return None
        self._count(client, now, "", throttled=True)
        return max(0.0, recent[0] + self.window - now)

    def failed(self, client: str, path: str) -> None:
        now = self.clock()
        recent = self._recent.pop(client, None) or deque(maxlen=self.limit)
        recent.append(now)
        self._recent[client] = recent
        _trim(self._recent)
        self._count(client, now, path, throttled=False)

    def _count(self, client: str, now: float, path: str, *, throttled: bool) -> None:
        entry = self._audit.get(client)
        if entry is not None and now - entry[0] >= self.window:
            self._done.append(entry[1])
            del self._audit[client]
            entry = None
        if entry is None:
            entry = (now, FailureWindow(client, self.wall()))
            self._audit[client] = entry
            if len(self._audit) > MAX_KEYS:
                self._done.append(self._audit.popitem(last=False)[1][1])
        window = entry[1]
        if throttled:
            window.throttled += 1
        else:
            window.failures += 1
            if path and path not in window.paths and len(window.paths) < 5:
                window.paths.append(path)

    def drain(self, *, everything: bool = False) -> list[FailureWindow]:
        """Audit rows of the windows that have ended (all of them with `everything`)."""
        now = self.clock()
        for client, (started, window) in list(self._audit.items()):
            if everything or now - started >= self.window:
                self._done.append(window)
                del self._audit[client]
        done, self._done = self._done, []
        return done


class RateLimiter:
    """A token bucket per key: `rate` commands a second on average, bursts of `burst`."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[key] = (tokens, now)
        _trim(self._buckets)
        return allowed


def _trim(mapping: OrderedDict[str, Any]) -> None:
    while len(mapping) > MAX_KEYS:
        mapping.popitem(last=False)
