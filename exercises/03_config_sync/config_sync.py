"""Config sync: keep the last good config from a control plane, and serve it through outages.

Exercise 03. Fill in every `raise NotImplementedError`, step by step (see README.md), and run
`pytest exercises/03_config_sync` to grade your work.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = [
    "Backoff",
    "ConfigStore",
    "ConfigSync",
    "CorruptCache",
    "InvalidConfig",
    "OfferResult",
    "OfferStatus",
    "Snapshot",
    "Subscriber",
    "SyncError",
    "Validator",
    "load_cache",
    "save_cache",
]


@dataclass(frozen=True)
class Snapshot:
    """One applied config and its version; immutable all the way down."""

    version: int
    config: Mapping[str, Any]

    def __post_init__(self) -> None:
        """Replace `config` with a deep, read-only copy of itself.

        Mappings become read-only mappings (types.MappingProxyType over a new dict), lists
        become tuples, recursively; str, int, float, bool and None stay as they are. The
        dataclass is frozen, so assign with `object.__setattr__(self, "config", ...)`.
        """
        # TODO(step 3): deep-freeze self.config. Until then the caller's dict is shared.


class OfferStatus(enum.Enum):
    """What the store did with an offered config."""

    APPLIED = "applied"  # newer and valid: it is what readers see now
    STALE = "stale"  # not newer than what is served: ignored
    REJECTED = "rejected"  # newer but invalid: the last good config keeps serving


@dataclass(frozen=True)
class OfferResult:
    """The outcome of ConfigStore.offer: the status, and what the store serves afterwards."""

    status: OfferStatus
    version: int  # the version that was offered
    current: Snapshot | None  # the snapshot served after the offer (None: nothing yet)
    reason: str | None = None  # why a REJECTED config was refused

    @property
    def applied(self) -> bool:
        """True when the offered config is now the one served."""
        return self.status is OfferStatus.APPLIED


class InvalidConfig(ValueError):
    """Raised by a validator to refuse a config; the message is the reason reported."""


# A validator raises (InvalidConfig, ideally) to refuse a config; returning means it is valid.
Validator = Callable[[Mapping[str, Any]], None]
# A subscriber is called once per applied version; it may be a plain function or a coroutine.
Subscriber = Callable[[Snapshot], Awaitable[None] | None]


class ConfigStore:
    """Holds the applied config; versions only move forward and invalid configs never apply."""

    def __init__(self, validator: Validator | None = None) -> None:
        self._validator = validator
        # TODO(step 1): keep the served Snapshot (None at first).
        # TODO(step 3): keep the subscribers.

    @property
    def current(self) -> Snapshot | None:
        """The snapshot readers should use now, or None before the first applied config."""
        # TODO(step 1)
        raise NotImplementedError

    @property
    def version(self) -> int | None:
        """The version being served, or None before the first applied config."""
        current = self.current
        return None if current is None else current.version

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber(snapshot)` after each applied version; return a function to stop.

        Subscribers are called in the order they subscribed, once per applied version and
        never for stale or rejected offers. A subscriber may return an awaitable (an `async
        def`), which offer() awaits. The returned function removes the subscriber.
        """
        # TODO(step 3)
        raise NotImplementedError

    async def offer(self, version: int, config: Mapping[str, Any]) -> OfferResult:
        """Apply `config` if `version` is newer than the served one and the validator accepts it.

        Step 1: a version not greater than the served one is ignored: return STALE with the
        snapshot still served. Otherwise serve `Snapshot(version, config)` and return APPLIED.
        Step 2: before applying, call the validator (if any) with the new config. If it raises
        anything, return REJECTED with `reason=str(error)` (never empty) and keep serving the
        last good snapshot. Stale offers are not validated.
        Step 3: replace the served snapshot in one assignment, then notify every subscriber
        with the new snapshot (awaiting async ones). A subscriber that raises is logged and
        skipped; the others are still notified and the offer is still APPLIED.
        """
        # TODO(step 1), then extend it in steps 2 and 3.
        raise NotImplementedError


class Backoff:
    """Exponential backoff, full jitter: delay n is uniform in [0, min(cap, base * 2**n)]."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng if rng is not None else random.Random()
        # TODO(step 5): count the delays drawn since the last reset.

    @property
    def attempt(self) -> int:
        """How many delays have been drawn since the last reset (stops growing at the cap)."""
        # TODO(step 5)
        raise NotImplementedError

    def next_delay(self) -> float:
        """Return the next delay in seconds and grow the ceiling for the one after.

        Delay n (n = 0 after a reset) is `rng.uniform(0, min(cap, base * 2**n))`. Stop
        growing n once the ceiling reaches the cap, so a long outage cannot overflow 2**n.
        """
        # TODO(step 5)
        raise NotImplementedError

    def reset(self) -> None:
        """Start again from `base`, after a success."""
        # TODO(step 5)
        raise NotImplementedError


class SyncError(Exception):
    """One poll of the control plane failed: unreachable, an error status, or a malformed answer."""


class CorruptCache(ValueError):
    """The cache file exists but does not hold a valid `{"version", "config"}` document."""


def save_cache(path: str | os.PathLike[str], snapshot: Snapshot) -> None:
    """Write `snapshot` to `path` atomically: readers find the old file or the new, never half.

    Write `{"version": ..., "config": {...}}` as JSON to a temp file in the same folder as
    `path`, flush and os.fsync it, then os.replace it over `path`. If anything fails, remove
    the temp file and let the error propagate; the old cache stays as it was.
    """
    # TODO(step 6)
    raise NotImplementedError


def load_cache(path: str | os.PathLike[str]) -> Snapshot | None:
    """Return the cached snapshot, None when there is no cache yet, or raise CorruptCache.

    Anything that is not a JSON object with an integer "version" and an object "config" (an
    empty, truncated or binary file, say) raises CorruptCache.
    """
    # TODO(step 6)
    raise NotImplementedError


Sleep = Callable[[float], Awaitable[None]]


class ConfigSync:
    """Long-poll a control plane for one service's config and feed it to a ConfigStore."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        service: str,
        store: ConfigStore,
        *,
        wait: float = 30.0,
        cache_path: str | os.PathLike[str] | None = None,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        timeout_grace: float = 5.0,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._service = service
        self._store = store
        self._wait = wait
        self._cache_path = cache_path
        self._backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._timeout_grace = timeout_grace  # the request timeout is wait + timeout_grace
        self.last_error: Exception | None = None  # why the last poll failed; None once healthy
        # TODO(step 4): remember the last ETag. TODO(step 5): the running task.

    async def poll_once(self) -> OfferResult | None:
        """Make one conditional long-poll; return the offer's result, or None on 304.

        GET {base_url}/v1/services/{service}/config?wait={wait}, with `If-None-Match: <ETag>`
        once an earlier 200 gave one. On 200, offer the body's version and config to the
        store, remember the response's ETag (even when the offer was stale or rejected), and
        persist applied configs to `cache_path` (step 6). Raise SyncError for anything else:
        connection errors, timeouts, a status other than 200 or 304, a 200 without an ETag,
        or a body that is not `{"version": <int>, "config": {...}}`.
        """
        # TODO(step 4), then persist in step 6.
        raise NotImplementedError

    async def run(self) -> None:
        """Poll until cancelled, backing off with full jitter while the control plane fails.

        After a SyncError: set `last_error`, then `await sleep(backoff.next_delay())`. After a
        success: clear `last_error` and reset the backoff. Poll again at once after a 304.
        """
        # TODO(step 5)
        raise NotImplementedError

    async def start(self) -> None:
        """Serve the cached config at once (if any), then run the poll loop as a task.

        Step 5: start `run()` as an asyncio task. Step 6: first, if `cache_path` is set, load
        the cache and offer it to the store; a corrupt or unreadable cache is logged as a
        warning naming the file, and start-up goes on without it.
        """
        # TODO(step 5), then load the cache in step 6.
        raise NotImplementedError

    async def stop(self) -> None:
        """Cancel the poll loop and wait for it to end."""
        # TODO(step 5)
        raise NotImplementedError

    async def __aenter__(self) -> ConfigSync:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
