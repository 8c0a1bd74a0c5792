"""Register an app with the node agent over its Unix socket for as long as the app runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web

from reference.protos import nodeagent_pb2, nodeagent_pb2_grpc

__all__ = ["REGISTRATION", "Registration", "node_agent_registration"]

log = logging.getLogger(__name__)

# How long start-up waits for the agent. A node agent restarting (a rolling update) is gone
# for seconds; past this the app exits and the kubelet's restart back-off takes over.
REGISTER_TIMEOUT = 30.0
DEREGISTER_TIMEOUT = 5.0
# Register is idempotent, so the app repeats it: an agent that restarted and forgot its apps
# learns of this one again within this many seconds, and hands out a new listener.
REFRESH_INTERVAL = 10.0


@dataclass
class Registration:
    """What the node agent gave this app: its own outbound listener (kept up to date)."""

    app_id: str
    service: str
    outbound_address: str = ""
    config_version: int = 0


REGISTRATION = web.AppKey("registration", Registration)


async def register(
    stub: nodeagent_pb2_grpc.NodeAgentStub, registration: Registration, timeout: float
) -> None:
    """Call Register once and store the listener the agent answers with in `registration`."""
    # wait_for_ready: an agent that is still starting is waited for (up to the timeout)
    # instead of failing the first attempt with UNAVAILABLE.
    reply = await stub.Register(
        nodeagent_pb2.RegisterRequest(app_id=registration.app_id, service=registration.service),
        timeout=timeout,
        wait_for_ready=True,
    )
    if reply.outbound_address != registration.outbound_address:
        log.info("node agent: %s sends outbound calls to %s", registration.app_id,
                 reply.outbound_address)
    registration.outbound_address = reply.outbound_address
    registration.config_version = reply.config_version


async def keep_registered(
    stub: nodeagent_pb2_grpc.NodeAgentStub, registration: Registration, interval: float
) -> None:
    """Repeat Register every `interval` seconds until cancelled; failures are retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await register(stub, registration, timeout=interval)
        except grpc.aio.AioRpcError as error:
            # The agent is away (restarting, most likely): keep serving inbound requests
            # and try again, rather than failing the app for its helper's sake.
            log.warning("node agent: Register failed (%s); retrying in %.3gs",
                        error.code().name, interval)


def node_agent_registration(
    socket_path: str,
    app_id: str,
    service: str,
    *,
    timeout: float = REGISTER_TIMEOUT,
    refresh: float = REFRESH_INTERVAL,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx: Register before the app serves, Deregister after it has drained."""

    async def registration_ctx(app: web.Application) -> AsyncIterator[None]:
        async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
            stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
            registration = Registration(app_id, service)
            await register(stub, registration, timeout)
            app[REGISTRATION] = registration
            keeper = asyncio.create_task(keep_registered(stub, registration, refresh))
            yield
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            # aiohttp runs this after the drain, so in-flight requests kept their outbound
            # listener to the end. A failure here only leaks a listener the agent can reap.
            try:
                await stub.Deregister(
                    nodeagent_pb2.DeregisterRequest(app_id=app_id), timeout=DEREGISTER_TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                log.warning("node agent: Deregister failed (%s)", error.code().name)

    return registration_ctx
