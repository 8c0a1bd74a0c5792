"""`python -m reference.controlplane`: the HTTP API and the gRPC API in one process.

    SIDECARLAB_TOKEN=s3cret python -m reference.controlplane --http-port 7070 --grpc-port 7071
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable

from aiohttp import web

from reference.controlplane.grpc_service import create_server, mark_serving
from reference.controlplane.http_api import ApiSettings, create_app
from reference.controlplane.hub import ConfigHub
from reference.controlplane.registry import NodeRegistry
from reference.controlplane.store import ConfigRepository
from reference.drain import DrainController
from reference.proxy_config import parse_proxy_config

log = logging.getLogger("reference.controlplane")

TOKEN_ENV = "SIDECARLAB_TOKEN"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reference controlplane",
        description="Versioned proxy configs over HTTP (for sidecars) and gRPC (for node agents).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address both APIs listen on")
    parser.add_argument("--http-port", type=int, default=7070, help="HTTP API port (0: any free)")
    parser.add_argument("--grpc-port", type=int, default=7071, help="gRPC API port (0: any free)")
    parser.add_argument("--db", default="sidecarlab.db", help="SQLite file holding every version")
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for PUT and rollback (default: ${TOKEN_ENV}; prefer the variable, "
        "a flag shows up in `ps`)",
    )
    parser.add_argument(
        "--suspect-after", type=float, default=15.0,
        help="seconds without a heartbeat before a node is suspect (nodes beat every third)",
    )
    parser.add_argument(
        "--dead-after", type=float, default=60.0,
        help="seconds without a heartbeat before a node is dead",
    )
    parser.add_argument(
        "--drain-delay", type=float, default=5.0,
        help="on SIGTERM, seconds to keep serving while load balancers stop sending (0 locally)",
    )
    parser.add_argument(
        "--drain-grace", type=float, default=25.0,
        help="on SIGTERM, seconds before requests still running are cut off",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO",
    )
    args = parser.parse_args(argv)
    if not args.token:
        # No token means nobody could change a config, or, worse if we allowed it, anybody
        # could: refuse to start instead of guessing.
        parser.error(f"a token is required: set {TOKEN_ENV} or pass --token")
    if not 0 < args.suspect_after < args.dead_after:
        parser.error("need 0 < --suspect-after < --dead-after")
    if not 0 <= args.drain_delay <= args.drain_grace:
        parser.error("need 0 <= --drain-delay <= --drain-grace")
    return args


def grpc_address(host: str, port: int) -> str:
    """host:port as gRPC wants it, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --8<-- [start:serve]
async def serve(
    args: argparse.Namespace,
    repository: ConfigRepository,
    *,
    on_listening: Callable[[int, int], object],
) -> None:
    """Serve both APIs until SIGTERM or SIGINT, then drain both and return."""
    hub = ConfigHub(repository, validator=parse_proxy_config)
    registry = NodeRegistry(suspect_after=args.suspect_after, dead_after=args.dead_after)
    drain = DrainController(delay=args.drain_delay, grace=args.drain_grace)
    app = create_app(hub, registry, ApiSettings(token=args.token), drain=drain)
    try:
        server, grpc_port, health = create_server(
            hub, registry, grpc_address(args.host, args.grpc_port)
        )
    except RuntimeError as error:  # grpc's way of saying the port is taken
        raise OSError(f"gRPC: {error}") from error
    # handle_signals=False: the handlers below start a drain; aiohttp's would just exit.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        await web.TCPSite(runner, args.host, args.http_port).start()
        http_port = runner.addresses[0][1]
        await server.start()
        await mark_serving(health)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, drain.start_drain)
        on_listening(http_port, grpc_port)

        await drain.wait_started()
        # Both APIs report "going away" at once: HTTP /readyz answers 503 (the drain does
        # that), gRPC health answers NOT_SERVING, and both keep serving for the drain delay
        # while load balancers and endpoints catch up.
        await health.enter_graceful_shutdown()
        http_drained = asyncio.create_task(drain.drain(runner))
        await asyncio.sleep(drain.delay)
        # Waits that would outlive us end now: long polls answer 503, Watch streams end with
        # OK, and clients keep their last good config while they reconnect with backoff (to
        # the replacement pod, or to this one after a restart).
        hub.close()
        # New RPCs are refused from here; running ones (Acks, Heartbeats) get what is left of
        # the grace period to finish, and are cancelled after it.
        await server.stop(max(0.0, drain.grace - drain.delay))
        await http_drained
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(None)  # a no-op after the graceful stop; immediate on an error
        await runner.cleanup()
# --8<-- [end:serve]


def main(argv: list[str] | None = None) -> int:
    """Run the control plane; 0 after a clean shutdown, 1 when it cannot start."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def on_listening(http_port: int, grpc_port: int) -> None:
        # One JSON line on stdout, so tests and the demo learn the ports when they ask for 0.
        line = {
            "event": "listening", "component": "controlplane", "http": http_port, "grpc": grpc_port,
        }
        print(json.dumps(line), flush=True)

    try:
        repository = ConfigRepository(args.db)
    except sqlite3.Error as error:
        print(f"controlplane: cannot open database {args.db}: {error}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(args, repository, on_listening=on_listening))
    except OSError as error:  # a port in use, an address not on this host
        print(f"controlplane: cannot serve: {error}", file=sys.stderr)
        return 1
    finally:
        repository.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
