"""The async face of the config store: validate, store off the event loop, wake the watchers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reference.controlplane.store import (
    AckRecord,
    ConfigRepository,
    StoredConfig,
    VersionInfo,
)

__all__ = ["ConfigHub", "HubClosed", "RejectedConfig", "Subscription"]

log = logging.getLogger(__name__)

# Raises ValueError (ProxyConfigError is one) to refuse a document; returning means valid.
Validator = Callable[[Mapping[str, Any]], object]


class RejectedConfig(ValueError):
    """A config that was not stored: not JSON, not an object, or refused by the validator."""


class HubClosed(Exception):
    """The control plane is shutting down: waits end at once, and clients reconnect later."""


class Subscription:
    """The services one watcher follows, and which of them have a new version since it looked."""

    def __init__(self, hub: ConfigHub, services: frozenset[str]) -> None:
        self.services = services
        self._hub = hub
        # A set, not a queue: a slow watcher that misses three versions of a service needs
        # only the newest one, so memory stays bounded by the number of services (xDS works
        # the same way: it sends state, not a log of changes).
        self._changed: set[str] = set()
        self._event = asyncio.Event()

    def _notify(self, service: str | None) -> None:
        # None only wakes the waiter: the hub closed.
        if service is not None:
            self._changed.add(service)
        self._event.set()

    async def changed(self, timeout: float | None = None) -> frozenset[str]:
        """Wait for new versions; return the services that got one (empty after `timeout`)."""
        if not self._changed and not self._hub.closed:
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                pass
        if self._hub.closed:
            raise HubClosed()
        changed, self._changed = frozenset(self._changed), set()
        self._event.clear()
        return changed

    def close(self) -> None:
        """Stop following; the hub forgets this subscription."""
        self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ConfigHub:
    """Stores configs through a ConfigRepository and tells subscribers about new versions."""

    def __init__(self, repository: ConfigRepository, validator: Validator | None = None) -> None:
        self.repository = repository
        self._validator = validator
        self._subscribers: dict[str, set[Subscription]] = {}
        # The newest version of each service read or stored so far. One process owns the
        # file, so this cannot go stale, and the thousand long polls one PUT wakes read it
        # from here instead of queueing a thousand times for the SQLite connection.
        self._latest: dict[str, StoredConfig] = {}
        self.closed = False

    # -- writes -------------------------------------------------------------------------------

    async def put(self, service: str, body: bytes | str) -> StoredConfig:
        """Parse, validate and store `body` as the next version; raise RejectedConfig."""
        # Parsing a large document and the fsync of the commit both block for milliseconds:
        # a worker thread keeps every long poll and Watch stream on the loop responsive.
        stored = await asyncio.to_thread(self._put, service, body)
        self._publish(stored)
        return stored

    def _put(self, service: str, body: bytes | str) -> StoredConfig:
        document = parse_json_object(body)
        self._validate(document)
        # Compact, key order kept: what was written reads back the same, only without spaces.
        compact = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self.repository.put(service, compact)

    async def rollback(self, service: str, version: int) -> StoredConfig:
        """Store a copy of `version` as a new, higher version; raise RejectedConfig, LookupError."""
        stored = await asyncio.to_thread(self._rollback, service, version)
        self._publish(stored)
        return stored

    def _rollback(self, service: str, version: int) -> StoredConfig:
        # Validated again: the rules may have become stricter since `version` was stored, and
        # sending every node a config they will all NACK would help nobody.
        self._validate(json.loads(self.repository.get(service, version).config_json))
        return self.repository.rollback(service, version)

    def _validate(self, document: dict[str, Any]) -> None:
        if self._validator is None:
            return
        try:
            self._validator(document)
        except (ValueError, RecursionError) as error:
            raise RejectedConfig(str(error) or type(error).__name__) from error

    async def record_ack(
        self,
        node_id: str,
        service: str,
        version: int,
        nonce: str,
        accepted: bool,
        error_detail: str = "",
    ) -> bool:
        """Record a node's ACK or NACK; False if a report on a newer version is already there."""
        return await asyncio.to_thread(
            self.repository.record_ack, node_id, service, version, nonce, accepted, error_detail
        )

    # -- reads --------------------------------------------------------------------------------

    async def latest(self, service: str) -> StoredConfig | None:
        """The newest version of `service`, or None."""
        if service not in self._latest:
            stored = await asyncio.to_thread(self.repository.latest, service)
            if stored is None:
                return None  # not cached: names that never get a config must not pile up
            self._remember(stored)
        return self._latest[service]

    def _remember(self, stored: StoredConfig) -> None:
        # Only ever forward: a read that started before a PUT may finish after it.
        cached = self._latest.get(stored.service)
        if cached is None or stored.version > cached.version:
            self._latest[stored.service] = stored

    async def versions(self, service: str, *, limit: int = 100) -> list[VersionInfo]:
        """The newest `limit` versions of `service`; raise UnknownService."""
        return await asyncio.to_thread(self.repository.versions, service, limit=limit)

    async def services(self) -> dict[str, int]:
        """Every service with a config, mapped to its newest version."""
        return await asyncio.to_thread(self.repository.services)

    async def acks(self, service: str) -> list[AckRecord]:
        """Every node's last report on `service`."""
        return await asyncio.to_thread(self.repository.acks, service)

    # -- change notification ------------------------------------------------------------------

    def subscribe(self, services: Iterable[str]) -> Subscription:
        """Follow `services`; subscribe *before* reading, so no version slips in between."""
        subscription = Subscription(self, frozenset(services))
        for service in subscription.services:
            self._subscribers.setdefault(service, set()).add(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        for service in subscription.services:
            followers = self._subscribers.get(service)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._subscribers[service]

    def _publish(self, stored: StoredConfig) -> None:
        # Runs on the event loop (after the worker thread returned), like every subscriber, so
        # the sets need no lock. Only this process is notified: one control plane process
        # owns the database file.
        log.info("stored %s v%s", stored.service, stored.version)
        self._remember(stored)
        for subscription in self._subscribers.get(stored.service, ()):
            subscription._notify(stored.service)

    def close(self) -> None:
        """End every wait, now and later, with HubClosed: the control plane is shutting down."""
        self.closed = True
        for followers in self._subscribers.values():
            for subscription in followers:
                subscription._notify(None)

    def watcher_count(self) -> int:
        """How many subscriptions are open (long polls plus Watch streams)."""
        return len({id(s) for followers in self._subscribers.values() for s in followers})


def parse_json_object(body: bytes | str) -> dict[str, Any]:
    """Decode a JSON object strictly: no NaN, Infinity or duplicate keys; raise RejectedConfig."""
    try:
        # Decoded here: json.loads would also guess UTF-16 and UTF-32, and JSON on the wire is
        # UTF-8 (RFC 8259 §8.1).
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        document = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError as error:
        raise RejectedConfig("invalid JSON: nested too deeply") from error
    except UnicodeDecodeError as error:
        raise RejectedConfig(f"invalid JSON: not UTF-8 ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise RejectedConfig(f"invalid JSON: {error}") from error
    except ValueError as error:  # raised by the two hooks
        raise RejectedConfig(f"invalid JSON: {error}") from error
    if not isinstance(document, dict):
        raise RejectedConfig(f"config must be a JSON object, got {type(document).__name__}")
    return document


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON: other parsers choke on them.
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of two equal keys, other parsers may keep the first: a document
    # that means two things to two readers is refused rather than guessed at.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document
