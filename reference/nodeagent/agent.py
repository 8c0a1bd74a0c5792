"""The node agent composed: local API, per-app listeners, one config watch, heartbeats, admin."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from reference.admin import ADMIN_HOST, create_admin_app
from reference.drain import DrainController, DrainResult
from reference.metrics import Registry
from reference.nodeagent.cache import ServiceCache
from reference.nodeagent.configs import ServiceConfigs
from reference.nodeagent.heartbeat import Heartbeat
from reference.nodeagent.local_api import LocalApi
from reference.nodeagent.registrations import RegistrationStore
from reference.nodeagent.registry import RESTORED_GRACE, AppRegistry
from reference.nodeagent.watch import ConfigWatch
from reference.proxy import create_upstream_session

__all__ = ["DEFAULT_SOCKET", "AgentSettings", "NodeAgent", "default_node_id", "run"]

log = logging.getLogger(__name__)

# The channel to the control plane. Its own reconnect backoff is capped like ours (Backoff's
# 30 s, Envoy's for xDS): with gRPC's default of 120 s the channel could sit out a control
# plane that is back already. Keepalive pings find a control plane that vanished without
# closing the Watch stream; the control plane allows one every 10 s, so 30 s is welcome.
CHANNEL_OPTIONS = [
    ("grpc.max_reconnect_backoff_ms", 30_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]

DEFAULT_SOCKET = "/tmp/sidecarlab/agent.sock"

# How long the local API lets a Register or ListApps in flight finish at shutdown.
LOCAL_API_GRACE = 1.0


def default_node_id() -> str:
    """The node's name: $NODE_NAME (set from the downward API in a DaemonSet), else hostname."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass(frozen=True)
class AgentSettings:
    """What one node agent process is told on its command line."""

    node_id: str = field(default_factory=default_node_id)
    control_plane: str = "127.0.0.1:7071"
    socket_path: str | None = DEFAULT_SOCKET
    grpc_port: int | None = None
    admin_port: int = 0
    cache_dir: str | None = None
    heartbeat_interval: float = 10.0
    drain_delay: float = 5.0
    drain_grace: float = 25.0
    # How long apps restored from the last run (kept in cache_dir) have to register again.
    restored_grace: float = RESTORED_GRACE


class NodeAgent:
    """One agent per node: every local app's outbound proxy, fed by one config watch."""

    def __init__(self, settings: AgentSettings) -> None:
        # Build inside a running event loop (the channel and the session belong to it);
        # nothing here does I/O: start() binds the listeners and starts the background work.
        self.settings = settings
        self.drain_controller = DrainController(
            delay=settings.drain_delay, grace=settings.drain_grace
        )
        self.metrics = Registry()
        cache = ServiceCache(settings.cache_dir) if settings.cache_dir is not None else None
        self.configs = ServiceConfigs(cache)
        self._channel = grpc.aio.insecure_channel(settings.control_plane, options=CHANNEL_OPTIONS)
        # One connection pool for every app's upstream calls; breakers stay per app.
        self._session = create_upstream_session()
        self.watch = ConfigWatch(self._channel, settings.node_id, self.configs)
        self.registry = AppRegistry(
            self.configs,
            self._session,
            drain=self.drain_controller,
            metrics=self.metrics,
            # The single Watch follows the set of services local apps need.
            on_services_changed=self.watch.watch,
            registrations=(RegistrationStore(settings.cache_dir)
                           if settings.cache_dir is not None else None),
        )
        self.heartbeat = Heartbeat(
            self._channel,
            settings.node_id,
            app_count=lambda: len(self.registry.apps()),
            applied_versions=self.applied_versions,
            interval=settings.heartbeat_interval,
        )
        self.local_api = LocalApi(
            self.registry, socket_path=settings.socket_path, port=settings.grpc_port
        )
        self._admin: web.AppRunner | None = None
        self.admin_port: int | None = None
        self._track_metrics()

    # --8<-- [start:start]
    async def start(self) -> None:
        """Serve the apps of the last run, the local API and the admin listener, then start
        watching and heartbeating."""
        # First: the apps' ports are back before anything else can take them.
        await self.registry.restore(grace=self.settings.restored_grace)
        await self.local_api.start()
        admin_app = create_admin_app(
            drain=self.drain_controller,
            metrics=self.metrics,
            config_view=self.config_view,
        )
        self._admin = web.AppRunner(admin_app, handle_signals=False)
        await self._admin.setup()
        # Loopback only, always: it shows every app's config and POST /drain stops the node.
        await web.TCPSite(self._admin, ADMIN_HOST, self.settings.admin_port).start()
        self.admin_port = self._admin.addresses[0][1]
        self.watch.start()
        self.heartbeat.start()
    # --8<-- [end:start]

    def applied_versions(self) -> dict[str, int]:
        """service -> version served, for the services local apps use now."""
        wanted = self.registry.services
        return {service: v for service, v in self.configs.versions().items() if service in wanted}

    def config_view(self) -> dict[str, Any]:
        """What GET /config on the admin listener shows: per-service versions, apps, watch."""
        return {
            "node_id": self.settings.node_id,
            "control_plane": self.settings.control_plane,
            "services": self.configs.describe(),
            "apps": [
                {
                    "app_id": app.app_id,
                    "service": app.service,
                    "outbound_address": app.address,
                    "config_version": app.config_version,
                }
                for app in self.registry.apps()
            ],
            "watch": {
                "services": sorted(self.watch.services),
                "connected": self.watch.connected,
                "last_error": self.watch.last_error,
            },
            "heartbeat": {
                "interval_seconds": self.heartbeat.interval,
                "last_error": self.heartbeat.last_error,
            },
        }

    def _track_metrics(self) -> None:
        apps = self.metrics.gauge(
            "sidecarlab_nodeagent_apps", "Apps registered with this node agent."
        )
        apps.track(lambda: {(): len(self.registry.apps())})
        versions = self.metrics.gauge(
            "sidecarlab_config_version", "Config version served, per service.", ("service",)
        )
        versions.track(lambda: {(service,): v for service, v in self.applied_versions().items()})
        connected = self.metrics.gauge(
            "sidecarlab_config_watch_connected",
            "1 while the Watch stream to the control plane delivers, 0 otherwise.",
        )
        connected.track(lambda: {(): int(self.watch.connected)})

    # --8<-- [start:drain]
    async def drain(self) -> DrainResult | None:
        """Drain every app's listener with one delay and grace period; None if there are none."""
        self.registry.close()  # no new apps while the node goes away
        self.drain_controller.start_drain()
        runners = [app.runner for app in self.registry.apps()]
        if not runners:
            return None
        # One controller tracks requests on all listeners: each drain() waits out the same
        # delay, closes its own listener, then all wait for the node-wide in-flight count.
        results = await asyncio.gather(*(self.drain_controller.drain(r) for r in runners))
        return results[-1]
    # --8<-- [end:drain]

    async def stop(self) -> None:
        """Stop everything; safe after a failed or partial start."""
        self.registry.close()
        await self.watch.stop()
        await self.heartbeat.stop()
        await self.local_api.stop(LOCAL_API_GRACE)
        for app in self.registry.apps():
            app.proxy.close()
            await app.runner.cleanup()
        if self._admin is not None:
            await self._admin.cleanup()
        await self._session.close()
        await self._channel.close()

    async def __aenter__(self) -> NodeAgent:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def run(
    settings: AgentSettings,
    *,
    on_started: Callable[[NodeAgent], object] | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> DrainResult | None:
    """Serve until SIGTERM (or POST /drain on the admin listener), drain every app, stop."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    async with NodeAgent(settings) as agent:
        try:
            # Handlers go in before on_started: a SIGTERM sent as soon as the listening line
            # is printed must start a drain, not kill the process.
            for sig in signals:
                loop.add_signal_handler(sig, agent.drain_controller.start_drain)
                installed.append(sig)
            if on_started is not None:
                on_started(agent)
            await agent.drain_controller.wait_started()
            return await agent.drain()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

