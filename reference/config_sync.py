"""Config sync: keep the last good config from a control plane, and serve it through outages."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import json
import logging
import os
import random
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

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

log = logging.getLogger(__name__)


# --8<-- [start:snapshot]
def _freeze(value: Any) -> Any:
    """Return a deep, read-only copy of a JSON-shaped value."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(item) for item in value)
    return value  # str, int, float, bool and None are immutable already


def _thaw(value: Any) -> Any:
    """Return plain dicts and lists again, for json.dumps."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class Snapshot:
    """One applied config and its version; immutable all the way down."""

    version: int
    config: Mapping[str, Any]

    def __post_init__(self) -> None:
        # Copy while freezing: a caller that keeps and later mutates its dict must not change
        # what readers see, and a reader must not be able to change it for everyone else.
        object.__setattr__(self, "config", _freeze(self.config))
# --8<-- [end:snapshot]


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
        self._current: Snapshot | None = None
        self._subscribers: list[Subscriber] = []
        # Serialises offers so subscribers hear versions in the order they were applied, even
        # when an async subscriber is slow and a second offer arrives meanwhile.
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Snapshot | None:
        """The snapshot readers should use now, or None before the first applied config."""
        return self._current

    @property
    def version(self) -> int | None:
        """The version being served, or None before the first applied config."""
        return None if self._current is None else self._current.version

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber(snapshot)` after each applied version; return a function to stop."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return unsubscribe

    # --8<-- [start:offer]
    async def offer(self, version: int, config: Mapping[str, Any]) -> OfferResult:
        """Apply `config` if `version` is newer than the served one and the validator accepts it."""
        async with self._lock:
            current = self._current
            if current is not None and version <= current.version:
                # Equal counts as stale too: a re-delivered version must not re-notify anyone.
                return OfferResult(OfferStatus.STALE, version, current)
            # Validate the frozen copy, so what was checked is exactly what gets served.
            candidate = Snapshot(version, config)
            if self._validator is not None:
                try:
                    self._validator(candidate.config)
                except Exception as error:  # a crashing validator must not crash the sidecar
                    reason = str(error) or type(error).__name__
                    log.warning("config version %s rejected: %s", version, reason)
                    return OfferResult(OfferStatus.REJECTED, version, current, reason)
            # One reference assignment: a reader sees the old snapshot or the new one, never a
            # mix, because nothing is ever mutated in place.
            self._current = candidate
            await self._notify(candidate)
            return OfferResult(OfferStatus.APPLIED, version, candidate)
    # --8<-- [end:offer]

    async def _notify(self, snapshot: Snapshot) -> None:
        for subscriber in list(self._subscribers):
            try:
                outcome = subscriber(snapshot)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                # One broken subscriber must not keep the others on the old config.
                log.exception(
                    "config subscriber %r failed on version %s", subscriber, snapshot.version
                )


# --8<-- [start:backoff]
class Backoff:
    """Exponential backoff, full jitter: delay n is uniform in [0, min(cap, base * 2**n)]."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        # The defaults are Envoy's for xDS streams: 500 ms initial, 30 s maximum.
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays have been drawn since the last reset (stops growing at the cap)."""
        return self._attempt

    def next_delay(self) -> float:
        """Return the next delay in seconds and grow the ceiling for the one after."""
        ceiling = min(self.cap, self.base * 2**self._attempt)
        if ceiling < self.cap:
            # Stop counting once the cap is reached, so 2**attempt never overflows a float
            # however long the control plane stays down.
            self._attempt += 1
        # Full jitter spreads a fleet of sidecars that lost the control plane at the same
        # moment across the whole window, instead of reconnecting in synchronised waves.
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Start again from `base`, after a success."""
        self._attempt = 0
# --8<-- [end:backoff]


class SyncError(Exception):
    """One poll of the control plane failed: unreachable, an error status, or a malformed answer."""


class CorruptCache(ValueError):
    """The cache file exists but does not hold a valid `{"version", "config"}` document."""


def _parse_document(raw: bytes) -> tuple[int, dict[str, Any]]:
    """Return (version, config) from `{"version": int, "config": {...}}`; raise ValueError."""
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    version = document.get("version")
    config = document.get("config")
    # bool is an int subclass; `"version": true` is a bug on the other side, not version 1.
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"'version' must be an integer, got {version!r}")
    if not isinstance(config, dict):
        raise ValueError(f"'config' must be an object, got {type(config).__name__}")
    return version, config


# --8<-- [start:persist]
def save_cache(path: str | os.PathLike[str], snapshot: Snapshot) -> None:
    """Write `snapshot` to `path` atomically: readers find the old file or the new, never half."""
    target = Path(path)
    data = json.dumps({"version": snapshot.version, "config": _thaw(snapshot.config)}).encode()
    # The temp file must be in the same folder: os.replace is only an atomic rename within one
    # file system. mkstemp also creates it readable by its owner only (configs hold secrets).
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            # Without fsync a power cut after the rename can leave an empty file under the
            # final name: the rename reached the disk before the data did.
            os.fsync(temp.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(folder: Path) -> None:
    # The rename itself lives in the directory; sync it so it survives a crash too (POSIX only:
    # Windows cannot open a directory this way, and its rename is already journalled).
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_cache(path: str | os.PathLike[str]) -> Snapshot | None:
    """Return the cached snapshot, None when there is no cache yet, or raise CorruptCache."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        version, config = _parse_document(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise CorruptCache(f"{path}: {error}") from error
    return Snapshot(version, config)
# --8<-- [end:persist]


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
        interval: float = 0.0,
        cache_path: str | os.PathLike[str] | None = None,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        timeout_grace: float = 5.0,
    ) -> None:
        self._session = session
        self._url = f"{base_url.rstrip('/')}/v1/services/{quote(service, safe='')}/config"
        self._service = service
        self._store = store
        # 30 s keeps an idle long poll under the 60 s idle timeout that load balancers such as
        # AWS's close connections at by default.
        self._wait = wait
        # Periodic polling instead of (or on top of) the long poll: with wait=0 and an interval,
        # a change is seen on average interval/2 late, the cost of not holding a connection open.
        self._interval = interval
        self._cache_path = Path(cache_path) if cache_path is not None else None
        self._backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        # The server may hold the request for `wait` seconds; the grace covers the round trip,
        # and the timeout as a whole stops a half-open connection from hanging the loop forever.
        self._timeout = aiohttp.ClientTimeout(total=wait + timeout_grace)
        self._etag: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: Exception | None = None  # why the last poll failed; None once healthy

    # --8<-- [start:poll]
    async def poll_once(self) -> OfferResult | None:
        """Make one conditional long-poll; return the offer's result, or None on 304."""
        headers = {"If-None-Match": self._etag} if self._etag is not None else {}
        try:
            async with self._session.get(
                self._url,
                params={"wait": f"{self._wait:g}"},
                headers=headers,
                timeout=self._timeout,
            ) as response:
                if response.status == 304:
                    return None  # the wait ran out and nothing changed: poll again at once
                if response.status != 200:
                    raise SyncError(f"control plane answered {response.status}")
                body = await response.read()
                etag = response.headers.get("ETag")
        except aiohttp.ClientError as error:  # refused, reset, DNS failure...
            raise SyncError(f"control plane unreachable: {error!r}") from error
        except asyncio.TimeoutError as error:
            raise SyncError("control plane did not answer in time") from error
        if etag is None:
            # Without an ETag the next request cannot be conditional, so the server would
            # answer at once every time: a tight loop. Treat it as a broken answer instead.
            raise SyncError("200 without an ETag")
        try:
            version, config = _parse_document(body)
        except ValueError as error:
            raise SyncError(f"malformed config document: {error}") from error
        result = await self._store.offer(version, config)
        if result.applied:
            # The node agent logs the same line: its timestamp says when a helper began serving.
            log.info("config %s v%s applied", self._service, version)
        # Remember the ETag even when the offer was stale or rejected: the next poll then waits
        # for a *new* version instead of fetching the same one again and again.
        self._etag = etag
        if result.applied and self._cache_path is not None and result.current is not None:
            await self._persist(result.current)
        return result
    # --8<-- [end:poll]

    async def _persist(self, snapshot: Snapshot) -> None:
        try:
            # fsync blocks for milliseconds on a busy disk; keep it off the event loop.
            await asyncio.to_thread(save_cache, self._cache_path, snapshot)
        except OSError as error:
            # The config is applied and served; only the offline copy is behind. Say so loudly.
            log.warning(
                "could not persist config version %s to %s: %s",
                snapshot.version, self._cache_path, error,
            )

    # --8<-- [start:run]
    async def run(self) -> None:
        """Poll until cancelled, backing off with full jitter while the control plane fails."""
        while True:
            try:
                await self.poll_once()
            except SyncError as error:
                self.last_error = error
                delay = self._backoff.next_delay()
                log.warning(
                    "config sync for %s failed: %s; retrying in %.3fs", self._service, error, delay
                )
                await self._sleep(delay)
            else:
                if self.last_error is not None:
                    log.info("config sync for %s recovered", self._service)
                self.last_error = None
                self._backoff.reset()
                if self._interval > 0:
                    await self._sleep(self._interval)
    # --8<-- [end:run]

    async def start(self) -> None:
        """Serve the cached config at once (if any), then run the poll loop as a task."""
        if self._task is not None:
            raise RuntimeError("ConfigSync already started")
        if self._cache_path is not None:
            await self._load_cache()
        self._task = asyncio.create_task(self.run(), name=f"config-sync:{self._service}")

    async def stop(self) -> None:
        """Cancel the poll loop and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> ConfigSync:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _load_cache(self) -> None:
        # Local and fast, so the sidecar can serve before the control plane answers, or at all
        # while it is down. The server's answer replaces it as soon as it is newer.
        try:
            snapshot = await asyncio.to_thread(load_cache, self._cache_path)
        except (CorruptCache, OSError) as error:
            # A damaged cache must never stop start-up: report it and wait for the server.
            log.warning("ignoring config cache %s: %s", self._cache_path, error)
            return
        if snapshot is None:
            return
        result = await self._store.offer(snapshot.version, snapshot.config)
        if result.status is OfferStatus.REJECTED:
            log.warning(
                "cached config version %s in %s rejected: %s",
                snapshot.version, self._cache_path, result.reason,
            )
