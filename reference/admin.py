"""The admin listener of a proxy: probes, Prometheus metrics and the config in use."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from reference.drain import DRAIN, DrainController
from reference.metrics import CONTENT_TYPE, Registry

__all__ = ["ADMIN_HOST", "create_admin_app"]

# Not configurable on purpose: whoever reaches this listener can read the config and take the
# proxy out of service (POST /drain). Envoy's admin port is the classic leak of exactly that.
ADMIN_HOST = "127.0.0.1"

NotReady = Callable[[], str | None]


def create_admin_app(
    *,
    drain: DrainController,
    metrics: Registry | None,
    config_view: Callable[[], dict[str, Any]],
    not_ready: NotReady | None = None,
) -> web.Application:
    """Build the admin app: /healthz, /readyz, /metrics, /config and POST /drain (preStop)."""
    app = web.Application()
    app[DRAIN] = drain

    async def readyz(request: web.Request) -> web.Response:
        # Draining wins over everything: the endpoint must leave the Service at once.
        if drain.draining:
            return web.Response(status=503, text="draining\n")
        reason = not_ready() if not_ready is not None else None
        if reason is not None:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ok\n")

    async def metrics_text(request: web.Request) -> web.Response:
        text = metrics.render() if metrics is not None else ""
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def config(request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(config_view(), indent=2, sort_keys=True) + "\n",
            content_type="application/json",
        )

    app.router.add_get("/healthz", drain.healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/config", config)
    app.router.add_post("/drain", drain.prestop)
    return app
