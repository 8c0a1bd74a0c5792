"""The node agent's config state: one ConfigStore per service, shared by that service's apps."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reference.config_sync import ConfigStore, OfferResult, OfferStatus
from reference.nodeagent.cache import ServiceCache
from reference.proxy_config import parse_proxy_config

__all__ = ["Rejection", "ServiceConfigs"]


@dataclass(frozen=True)
class Rejection:
    """The last update of a service that was refused, and why; shown on /config."""

    version: int
    reason: str


class ServiceConfigs:
    """Per-service ConfigStores validated by parse_proxy_config, seeded from the disk cache."""

    def __init__(self, cache: ServiceCache | None = None) -> None:
        self._cache = cache
        self._stores: dict[str, ConfigStore] = {}
        self._rejections: dict[str, Rejection] = {}
        # Two apps of a new service registering at once must not both read the cache and
        # create two stores; the loser would keep a store nobody feeds.
        self._lock = asyncio.Lock()

    async def store(self, service: str) -> ConfigStore:
        """The store of `service`, created on first use with the cached config, if any."""
        store = self._stores.get(service)
        if store is not None:
            return store
        async with self._lock:
            store = self._stores.get(service)
            if store is None:
                store = ConfigStore(validator=parse_proxy_config)
                if self._cache is not None:
                    snapshot = await self._cache.load(service)
                    if snapshot is not None:
                        # Validated like any update: a cache written by an older agent with
                        # laxer rules must not slip an invalid config past the validator.
                        result = await store.offer(snapshot.version, snapshot.config)
                        self._note(service, result)
                self._stores[service] = store
            return store

    def get(self, service: str) -> ConfigStore | None:
        """The store of `service` if one exists already."""
        return self._stores.get(service)

    async def offer(self, service: str, version: int, config: Mapping[str, Any]) -> OfferResult:
        """Offer an update to `service`'s store; cache it on disk once it is applied."""
        result = await (await self.store(service)).offer(version, config)
        self._note(service, result)
        if result.applied and self._cache is not None and result.current is not None:
            await self._cache.save(service, result.current)
        return result

    def versions(self) -> dict[str, int]:
        """service -> the version served, for services that have a config (known_versions)."""
        return {
            service: store.version
            for service, store in sorted(self._stores.items())
            if store.version is not None
        }

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per-service version and last rejection, JSON-ready, for the admin /config page."""
        described: dict[str, dict[str, Any]] = {}
        for service, store in sorted(self._stores.items()):
            rejection = self._rejections.get(service)
            described[service] = {
                "version": store.version,
                "rejected": None if rejection is None
                else {"version": rejection.version, "reason": rejection.reason},
            }
        return described

    def _note(self, service: str, result: OfferResult) -> None:
        if result.status is OfferStatus.REJECTED:
            self._rejections[service] = Rejection(result.version, result.reason or "invalid")
        elif result.applied:
            self._rejections.pop(service, None)
