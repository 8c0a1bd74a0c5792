"""The local API: apps register with the node agent over gRPC on a Unix domain socket."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

import grpc

from reference.nodeagent.registry import (
    AppConflict,
    AppRegistry,
    InvalidApp,
    LocalApp,
    RegistryClosed,
    TooManyApps,
    UnknownApp,
)
from reference.protos import nodeagent_pb2, nodeagent_pb2_grpc

__all__ = ["LocalApi", "NodeAgentServicer"]

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux and 104 on macOS, including the final NUL; a longer path
# fails deep inside gRPC with a vague error, so check it up front with a clear one.
MAX_SOCKET_PATH = 103

# Read and write for the owner and its group, nothing for others: connecting to a Unix socket
# needs write permission on it, so "others" cannot register apps (SPIRE and ztunnel do alike).
SOCKET_MODE = 0o660


def _info(app: LocalApp) -> nodeagent_pb2.AppInfo:
    return nodeagent_pb2.AppInfo(
        app_id=app.app_id,
        service=app.service,
        outbound_address=app.address,
        config_version=app.config_version,
    )


# --8<-- [start:servicer]
class NodeAgentServicer(nodeagent_pb2_grpc.NodeAgentServicer):
    """Register, Deregister and ListApps, backed by the agent's AppRegistry."""

    def __init__(self, registry: AppRegistry) -> None:
        self._registry = registry

    async def Register(
        self, request: nodeagent_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> nodeagent_pb2.RegisterReply:
        try:
            app = await self._registry.register(request.app_id, request.service)
        except InvalidApp as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except AppConflict as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except TooManyApps as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except RegistryClosed as error:
            # UNAVAILABLE is the status clients retry: the app retries with the next agent.
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return nodeagent_pb2.RegisterReply(
            outbound_address=app.address, config_version=app.config_version
        )

    async def Deregister(
        self, request: nodeagent_pb2.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> nodeagent_pb2.DeregisterReply:
        try:
            await self._registry.deregister(request.app_id)
        except UnknownApp as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        return nodeagent_pb2.DeregisterReply()

    async def ListApps(
        self, request: nodeagent_pb2.ListAppsRequest, context: grpc.aio.ServicerContext
    ) -> nodeagent_pb2.ListAppsReply:
        return nodeagent_pb2.ListAppsReply(apps=[_info(app) for app in self._registry.apps()])
# --8<-- [end:servicer]


def _claim_socket_path(path: Path) -> None:
    """Make `path` free to bind: create its folder, remove a stale socket, refuse anything else."""
    # 0o750 on a folder we create: until the chmod below, the socket has whatever mode the
    # umask gives it, and the folder keeps strangers out of that window. An existing folder
    # (/tmp, a hostPath volume) keeps its mode: it is not ours to change.
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        # Left behind by an agent that crashed: nobody accepts on it, so it is safe to remove.
        # gRPC would unlink it too, but without this check it would also unlink a live one.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        raise OSError(f"another process is serving on {path}")
    finally:
        probe.close()


class LocalApi:
    """The NodeAgent gRPC server: a Unix domain socket, and loopback TCP where asked for."""

    def __init__(
        self,
        registry: AppRegistry,
        *,
        socket_path: str | os.PathLike[str] | None,
        port: int | None = None,
    ) -> None:
        if socket_path is None and port is None:
            raise ValueError("need a socket path, a loopback port, or both")
        self._registry = registry
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self._requested_port = port
        self.port: int | None = None  # the bound loopback port, once started
        self._server: grpc.aio.Server | None = None

    @property
    def targets(self) -> list[str]:
        """gRPC targets a client can dial, e.g. ["unix:/tmp/sidecarlab/agent.sock"]."""
        targets = []
        if self.socket_path is not None:
            targets.append(f"unix:{self.socket_path}")
        if self.port is not None:
            targets.append(f"127.0.0.1:{self.port}")
        return targets

    async def start(self) -> None:
        """Bind and start serving."""
        # No SO_REUSEPORT (gRPC sets it by default on Linux): a second agent must fail to bind
        # the loopback port, not silently take half of the registrations.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = NodeAgentServicer(self._registry)
        nodeagent_pb2_grpc.add_NodeAgentServicer_to_server(servicer, server)
        try:
            if self.socket_path is not None:
                self._bind_socket(server, self.socket_path)
            if self._requested_port is not None:
                # Loopback only: the API hands out listeners, so it is for this host's apps.
                self.port = server.add_insecure_port(f"127.0.0.1:{self._requested_port}")
        except BaseException as error:
            await server.stop(None)  # frees what was bound already
            if isinstance(error, RuntimeError):  # gRPC's way of saying the address is taken
                raise OSError(f"local API cannot bind: {error}") from error
            raise
        await server.start()
        self._server = server
        log.info("local API serving on %s", ", ".join(self.targets))

    @staticmethod
    def _bind_socket(server: grpc.aio.Server, path: Path) -> None:
        size = len(os.fsencode(path))
        if size > MAX_SOCKET_PATH:
            raise OSError(
                errno.ENAMETOOLONG,
                f"socket path is {size} bytes; Unix sockets allow {MAX_SOCKET_PATH}: "
                "choose a shorter one",
            )
        _claim_socket_path(path)
        server.add_insecure_port(f"unix:{path}")
        # Bound but not accepting until start(): tighten the mode before anyone can connect.
        os.chmod(path, SOCKET_MODE)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving: new calls are refused at once, in-flight ones get `grace` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        # After `grace` seconds gRPC cancels the calls still running; a Register caught there
        # fails on the app's side and the app retries against the next agent.
        await server.stop(grace)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
