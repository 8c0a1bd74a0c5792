"""One config watch per node: a single gRPC Watch stream for every service a local app needs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc

from reference.config_sync import Backoff, OfferStatus
from reference.nodeagent.background import Background
from reference.nodeagent.configs import ServiceConfigs
from reference.protos import controlplane_pb2, controlplane_pb2_grpc

__all__ = ["ConfigWatch"]

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# An ACK is a small unary call; if the control plane cannot take it in this time the stream
# is in trouble too, and the reconnect re-sends what the ACK would have confirmed.
ACK_TIMEOUT = 5.0


class ConfigWatch(Background):
    """Keep one Watch stream open for the wanted services; apply, ACK or NACK each update."""

    task_name = "nodeagent-config-watch"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        configs: ServiceConfigs,
        *,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._stub = controlplane_pb2_grpc.ControlPlaneStub(channel)
        self._node_id = node_id
        self._configs = configs
        self._backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._wanted: frozenset[str] = frozenset()
        self._streaming: frozenset[str] = frozenset()  # what the open stream asked for
        self._changed = asyncio.Event()
        self.connected = False  # True once the current stream has delivered an update
        self.last_error: str | None = None  # why the last stream broke; None while healthy

    @property
    def services(self) -> frozenset[str]:
        """The services the watch asks for."""
        return self._wanted

    def watch(self, services: Iterable[str]) -> None:
        """Ask for exactly `services`; the stream restarts only when one is new to it."""
        self._wanted = frozenset(services)
        # A service that left stays on the open stream (reopening costs a round trip for
        # nothing) but its updates are ignored from now on, so it no longer counts as
        # followed: if an app needs it again, the stream reopens and catches up on what was
        # ignored meanwhile. A service new to the stream needs a new request anyway.
        self._streaming &= self._wanted
        if not self._wanted <= self._streaming:
            self._changed.set()

    # --8<-- [start:handle]
    async def handle(
        self, update: controlplane_pb2.ConfigUpdate
    ) -> controlplane_pb2.AckRequest | None:
        """Offer one update to its service's store; return the ACK or NACK to send (or None)."""
        if update.service not in self._wanted:
            # Sent before the control plane saw a restart without it: nobody local needs it.
            return None
        reason: str | None
        try:
            config = json.loads(update.config_json)
            if not isinstance(config, dict):
                raise ValueError(f"expected a JSON object, got {type(config).__name__}")
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            accepted, reason = False, f"config_json: {error}"
        else:
            result = await self._configs.offer(update.service, update.version, config)
            # STALE is accepted: the node already serves this version or a newer one.
            accepted, reason = result.status is not OfferStatus.REJECTED, result.reason
        if accepted:
            log.info("config %s v%s applied", update.service, update.version)
        else:
            # The store kept the last good config; the NACK makes the reason visible centrally.
            log.warning("config %s v%s rejected: %s", update.service, update.version, reason)
        return controlplane_pb2.AckRequest(
            node_id=self._node_id,
            service=update.service,
            version=update.version,
            nonce=update.nonce,
            accepted=accepted,
            error_detail="" if accepted else (reason or "rejected"),
        )
    # --8<-- [end:handle]

    # --8<-- [start:run]
    async def run(self) -> None:
        """Stream until cancelled: reopen on new services, back off while the stream fails."""
        while True:
            if not self._wanted:
                self._changed.clear()
                await self._changed.wait()  # no app needs a config yet: no stream at all
                continue
            self._changed.clear()
            self._streaming = self._wanted
            request = controlplane_pb2.WatchRequest(
                node_id=self._node_id,
                services=sorted(self._streaming),
                # What is served already (from earlier streams or the disk cache), so the
                # control plane sends only what is newer instead of every config again.
                known_versions=self._configs.versions(),
            )
            call = self._stub.Watch(request)
            stream = asyncio.create_task(self._consume(call))
            changed = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait({stream, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                call.cancel()
                for task in (stream, changed):
                    task.cancel()
                await asyncio.wait({stream})  # wait() collects the outcome, never raises it
                self.connected = False
            if changed.done() and not changed.cancelled():
                continue  # a new service: reopen at once with the larger set
            # Loud once per outage, quiet while it lasts (the same line every 30 s for hours
            # would bury everything else in the node's log).
            level = logging.WARNING if self.last_error is None else logging.DEBUG
            self.last_error = _describe(None if stream.cancelled() else stream.exception())
            delay = self._backoff.next_delay()
            log.log(level, "config watch broke: %s; reconnecting in %.3fs", self.last_error, delay)
            await self._sleep(delay)

    async def _consume(self, call: grpc.aio.UnaryStreamCall) -> None:
        async for update in call:
            if not self.connected:
                # Envoy's rule too: the backoff starts over once a stream delivers something.
                self.connected = True
                self.last_error = None
                self._backoff.reset()
            ack = await self.handle(update)
            if ack is not None:
                await self._send(ack)
    # --8<-- [end:run]

    async def _send(self, ack: controlplane_pb2.AckRequest) -> None:
        try:
            await self._stub.Ack(ack, timeout=ACK_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            # The update is applied (or refused) locally either way; only the report is lost.
            log.warning("could not report %s v%s: %s", ack.service, ack.version, error.code())


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "stream ended by the control plane"
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)
