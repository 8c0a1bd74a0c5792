"""Shared pieces: a proxy config, a fake clock, and the control plane's parts on a temp file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from reference.controlplane.http_api import ApiSettings, create_app
from reference.controlplane.hub import ConfigHub
from reference.controlplane.registry import NodeRegistry
from reference.controlplane.store import ConfigRepository
from reference.proxy_config import parse_proxy_config

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_config(subset: str = "v1", **extra: Any) -> dict[str, Any]:
    """A valid proxy config that sends every request for reviews to one subset."""
    return {
        "routes": {
            "hosts": ["reviews"],
            "http": [
                {"name": "all", "route": [{"destination": {"host": "reviews", "subset": subset}}]}
            ],
        },
        "clusters": {"reviews": {subset: ["127.0.0.1:9081"]}},
        **extra,
    }


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "controlplane.db"


@pytest.fixture
def repository(db_path: Path) -> Iterator[ConfigRepository]:
    repository = ConfigRepository(db_path)
    yield repository
    repository.close()


@pytest.fixture
def hub(repository: ConfigRepository) -> ConfigHub:
    return ConfigHub(repository, validator=parse_proxy_config)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> NodeRegistry:
    return NodeRegistry(suspect_after=15.0, dead_after=60.0, clock=clock)


ClientFactory = Callable[..., Any]


@pytest.fixture
def make_client(aiohttp_client: Any, hub: ConfigHub, registry: NodeRegistry) -> ClientFactory:
    """Start the HTTP API on 127.0.0.1, optionally with other settings or another hub."""

    async def start(hub: ConfigHub = hub, **settings: Any) -> TestClient:
        return await aiohttp_client(create_app(hub, registry, ApiSettings(token=TOKEN, **settings)))

    return start


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[TestClient]:
    yield await make_client()
