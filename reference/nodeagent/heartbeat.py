"""Heartbeats: tell the control plane this node is alive, what it is, and what it serves."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping

import grpc

from reference.config_sync import Backoff
from reference.nodeagent.background import Background
from reference.protos import controlplane_pb2, controlplane_pb2_grpc

__all__ = ["AGENT_VERSION", "Heartbeat", "node_facts"]

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"

# The control plane chooses the interval; these bounds keep a bad answer (0, or a day) from
# turning the agent into a busy loop or making it look dead.
MIN_INTERVAL = 0.05
MAX_INTERVAL = 300.0
HEARTBEAT_TIMEOUT = 5.0

Sleep = Callable[[float], Awaitable[None]]


# --8<-- [start:facts]
def node_facts(app_count: int) -> dict[str, str]:
    """What the control plane's registry shows about this node; values are strings on the wire."""
    try:
        load = ",".join(f"{value:.2f}" for value in os.getloadavg())
    except (AttributeError, OSError):  # Windows has no load average
        load = ""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "apps": str(app_count),
        "cpu_count": str(os.cpu_count() or 0),
        "load_average": load,
        "pid": str(os.getpid()),
        "agent_version": AGENT_VERSION,
        "implementation": sys.implementation.name,
    }
# --8<-- [end:facts]


class Heartbeat(Background):
    """Send a Heartbeat every interval; the interval is whatever the control plane last asked."""

    task_name = "nodeagent-heartbeat"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        *,
        app_count: Callable[[], int],
        applied_versions: Callable[[], Mapping[str, int]],
        interval: float = 10.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._stub = controlplane_pb2_grpc.ControlPlaneStub(channel)
        self._node_id = node_id
        self._app_count = app_count
        self._applied_versions = applied_versions
        self.interval = interval  # updated from each reply's interval_ms
        self._sleep = sleep
        # While the control plane is down, retry sooner than a long interval would, so the
        # node shows up again soon after it comes back; never later than the interval.
        self._backoff = Backoff(base=min(0.5, interval), cap=max(interval, 0.5))
        self.sent = 0  # heartbeats the control plane answered
        self.last_error: str | None = None

    async def beat(self) -> float:
        """Send one heartbeat and return the interval the control plane asks for."""
        facts = node_facts(self._app_count())
        reply = await self._stub.Heartbeat(
            controlplane_pb2.HeartbeatRequest(
                node_id=self._node_id,
                hostname=facts["hostname"],
                facts=facts,
                applied_versions=dict(self._applied_versions()),
            ),
            timeout=HEARTBEAT_TIMEOUT,
        )
        self.sent += 1
        if reply.interval_ms > 0:
            self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, reply.interval_ms / 1000))
        return self.interval

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            try:
                delay = await self.beat()
            except grpc.aio.AioRpcError as error:
                # Loud once per outage, quiet while it lasts: a control plane down for an hour
                # must not fill the node's disk with the same line.
                level = logging.WARNING if self.last_error is None else logging.DEBUG
                self.last_error = f"{error.code().name}: {error.details()}"
                delay = min(self._backoff.next_delay(), self.interval)
                log.log(level, "heartbeat failed: %s; next in %.3fs", self.last_error, delay)
            else:
                self.last_error = None
                self._backoff.reset()
            await self._sleep(delay)
