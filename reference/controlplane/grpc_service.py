"""The control plane's gRPC API for node agents: Watch configs, Ack them, Heartbeat."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from reference.controlplane.hub import ConfigHub, HubClosed
from reference.controlplane.names import check_node_id, check_service_name
from reference.controlplane.registry import NodeRegistry
from reference.controlplane.store import UnknownService, UnknownVersion
from reference.protos import controlplane_pb2 as pb
from reference.protos import controlplane_pb2_grpc

__all__ = ["SERVICE_NAME", "ControlPlaneServicer", "create_server", "mark_serving"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ControlPlane"].full_name

# Bounds on what one node may make this process hold or store.
MAX_WATCHED_SERVICES = 1024
MAX_NONCE_LENGTH = 128
MAX_ERROR_DETAIL = 4096  # longer NACK reasons are cut: the start names the field at fault
MAX_FACTS = 64
MAX_FACT_KEY = 128
MAX_FACT_VALUE = 1024

SERVER_OPTIONS = [
    # Watch streams live for hours. Pinging idle connections finds node agents that vanished
    # without closing theirs (a powered-off host, a dropped NAT mapping) and frees their state.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Let clients ping too (every 10 s at most) so their side can find a dead control plane.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class ControlPlaneServicer(controlplane_pb2_grpc.ControlPlaneServicer):
    """Pushes config versions to node agents, records their ACKs and NACKs and heartbeats."""

    def __init__(self, hub: ConfigHub, registry: NodeRegistry) -> None:
        self._hub = hub
        self._registry = registry

    # --8<-- [start:watch]
    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConfigUpdate]:
        """Send each watched service's newest version the node lacks, now and as they come."""
        node_id = await _valid(context, check_node_id, request.node_id)
        services = frozenset(request.services)
        if not 0 < len(services) <= MAX_WATCHED_SERVICES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"watch 1 to {MAX_WATCHED_SERVICES} services, got {len(services)}",
            )
        for service in services:
            await _valid(context, check_service_name, service)
        log.info("node %s watches %s", node_id, ", ".join(sorted(services)))
        # Subscribe before the first read, so a version stored in between is not missed.
        with self._hub.subscribe(services) as subscription:
            sent = {service: request.known_versions.get(service, 0) for service in services}
            pending: frozenset[str] = services
            while True:
                for service in sorted(pending):
                    stored = await self._hub.latest(service)
                    # Only the newest version is sent, never the ones in between: a node needs
                    # the current state, not the history (xDS's state-of-the-world rule).
                    if stored is not None and stored.version > sent[service]:
                        sent[service] = stored.version
                        yield pb.ConfigUpdate(
                            service=service,
                            version=stored.version,
                            # Fresh per push, so an Ack names the push it answers even when
                            # the same version is sent twice (after a reconnect).
                            nonce=secrets.token_hex(8),
                            config_json=stored.config_json,
                        )
                try:
                    pending = await subscription.changed()
                except HubClosed:
                    # Ending with OK tells the node to reconnect (to the replacement process)
                    # with the versions it has applied; it serves them meanwhile.
                    log.info("ending the watch of node %s: shutting down", node_id)
                    return
    # --8<-- [end:watch]

    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext) -> pb.AckReply:
        """Record an ACK or NACK; a NACK leaves the node's applied version where it was."""
        node_id = await _valid(context, check_node_id, request.node_id)
        service = await _valid(context, check_service_name, request.service)
        if request.version < 1 or len(request.nonce) > MAX_NONCE_LENGTH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"version must be >= 1 and nonce at most {MAX_NONCE_LENGTH} characters",
            )
        detail = request.error_detail[:MAX_ERROR_DETAIL]
        try:
            recorded = await self._hub.record_ack(
                node_id, service, request.version, request.nonce, request.accepted, detail
            )
        except (UnknownService, UnknownVersion):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{service} has no version {request.version}"
            )
        if not request.accepted:
            log.warning("node %s NACKed %s v%s: %s", node_id, service, request.version, detail)
        return pb.AckReply(recorded=recorded)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatReply:
        """Mark the node alive; the reply says when to beat next."""
        node_id = await _valid(context, check_node_id, request.node_id)
        await _valid(context, _check_facts, request.facts)
        if len(request.applied_versions) > MAX_WATCHED_SERVICES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "too many applied_versions")
        self._registry.heartbeat(
            node_id,
            hostname=request.hostname[:MAX_FACT_VALUE],
            facts=request.facts,
            applied_versions=request.applied_versions,
        )
        # The registry decides the interval, so changing --suspect-after re-paces every node.
        return pb.HeartbeatReply(interval_ms=round(self._registry.heartbeat_interval * 1000))


async def _valid(context: grpc.aio.ServicerContext, check: Callable[[T], T], value: T) -> T:
    """`check(value)`, turning its ValueError into INVALID_ARGUMENT."""
    try:
        return check(value)
    except ValueError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _check_facts(facts: Mapping[str, str]) -> Mapping[str, str]:
    # Facts are kept in memory and shown by GET /v1/nodes: bounded, so one node cannot
    # bloat either.
    if len(facts) > MAX_FACTS:
        raise ValueError(f"at most {MAX_FACTS} facts, got {len(facts)}")
    for key, value in facts.items():
        if len(key) > MAX_FACT_KEY or len(value) > MAX_FACT_VALUE:
            raise ValueError(
                f"fact keys are at most {MAX_FACT_KEY} characters, values {MAX_FACT_VALUE}"
            )
    return facts


def create_server(
    hub: ConfigHub, registry: NodeRegistry, address: str
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """A server with the ControlPlane and grpc.health.v1 services, bound (not started) at
    `address` ("host:port", port 0 picks one); returns it, its port and its health servicer."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    controlplane_pb2_grpc.add_ControlPlaneServicer_to_server(
        ControlPlaneServicer(hub, registry), server
    )
    # The standard health service, so grpc_health_probe, Kubernetes' gRPC probes and load
    # balancers can check this server like any other. "" is the whole server.
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(address)
    return server, port, health


async def mark_serving(health: health_aio.HealthServicer) -> None:
    """Report SERVING for the server as a whole and for the ControlPlane service by name."""
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
