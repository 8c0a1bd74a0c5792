"""Real servers on 127.0.0.1 for the tutorial tests: upstreams and a tutorial control plane."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

STEPS = {
    "controlplane": ["step01_store", "step02_validate", "step03_etag", "step04_long_poll",
                     "step05_sqlite"],
    "sidecar": ["step01_forward", "step02_headers", "step03_routes", "step04_breaker",
                "step05_control_plane"],
    "nodeagent": ["step01_registry", "step02_listeners", "step03_isolation", "step04_fan_out",
                  "step05_cache"],
}


def step(tutorial: str, name: str) -> ModuleType:
    """Import one step file as the pages' `python -m docs_src.tutorials...` would."""
    return importlib.import_module(f"docs_src.tutorials.{tutorial}.{name}")


def steps(tutorial: str, first: int = 1, last: int = 5) -> list[Any]:
    """pytest params over the step modules `first`..`last` of a tutorial, named by file."""
    names = STEPS[tutorial][first - 1:last]
    return [pytest.param(step(tutorial, name), id=name) for name in names]


@dataclass
class Upstream:
    """A test upstream: answers with its name and the headers it saw; `status` can be set."""

    name: str
    server: TestServer | None = None
    status: int = 200
    hits: int = 0
    reply_headers: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
def upstream(aiohttp_server: Any) -> Callable[[str], Awaitable[Upstream]]:
    """Start an upstream on a free port of 127.0.0.1: `await upstream("v1")`."""

    async def start(name: str) -> Upstream:
        record = Upstream(name)

        async def handle(request: web.Request) -> web.Response:
            record.hits += 1
            body = await request.read()
            return web.json_response(
                {"upstream": name, "method": request.method, "path": request.path_qs,
                 "headers": list(request.headers.items()), "body": body.decode()},
                status=record.status, headers=record.reply_headers,
            )

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", handle)
        record.server = await aiohttp_server(app)
        return record

    return start


def reviews_config(subsets: dict[str, Upstream], weights: dict[str, int],
                   **extra: Any) -> dict[str, Any]:
    """A proxy config that splits host `reviews` between `subsets` by `weights`."""
    return {
        "routes": {"hosts": ["reviews"], "http": [{"name": "split", "route": [
            {"destination": {"host": "reviews", "subset": name}, "weight": weight}
            for name, weight in weights.items()
        ]}]},
        "clusters": {"reviews": {name: [up.address] for name, up in subsets.items()}},
        **extra,
    }


@pytest.fixture
async def control_plane(aiohttp_client: Any) -> AsyncIterator[Any]:
    """The control-plane tutorial's step 4 (long-poll, no token): a test client on it."""
    client = await aiohttp_client(step("controlplane", "step04_long_poll").create_app())
    yield client
