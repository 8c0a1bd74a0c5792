"""`python -m reference nodeagent`: one agent per host, serving every local app.

    python -m reference nodeagent --socket /tmp/sidecarlab/agent.sock \\
        --control-plane-grpc 127.0.0.1:7071 --cache-dir /var/cache/sidecarlab
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys

from reference.nodeagent.agent import (
    DEFAULT_SOCKET,
    AgentSettings,
    NodeAgent,
    default_node_id,
    run,
)
from reference.runtime import EVENT_LOOPS, event_loop_factory, settle_memory

log = logging.getLogger("reference.nodeagent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reference nodeagent",
        description="One agent per host: apps register over a Unix socket and each gets its own "
        "outbound listener, configured through one Watch stream to the control plane.",
    )
    parser.add_argument("--node-id", default=default_node_id(),
                        help="this node's name (default: $NODE_NAME, else the hostname)")
    parser.add_argument("--control-plane-grpc", default="127.0.0.1:7071", metavar="HOST:PORT",
                        help="the control plane's gRPC address (default: %(default)s)")
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, metavar="PATH",
        help="Unix socket of the local API, its folder created if missing (default: "
        "%(default)s); '' turns it off, then --grpc-port is required",
    )
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also serve the local API on 127.0.0.1:PORT (0: any free port)")
    # 15020, not the sidecar's 15000: both may run on one host (ztunnel uses 15020 for stats).
    parser.add_argument(
        "--admin-port", type=int, default=15020,
        help="admin listener, always on 127.0.0.1 (default: %(default)s; 0: any free port)",
    )
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="keep each service's last good config here, to start offline")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, metavar="SECONDS",
                        help="until the control plane asks for another (default: %(default)s)")
    parser.add_argument(
        "--drain-delay", type=float, default=5.0,
        help="on SIGTERM, seconds the apps' listeners keep serving before they close (0 locally)",
    )
    parser.add_argument("--drain-grace", type=float, default=25.0,
                        help="on SIGTERM, seconds before requests still running are cut off")
    # uvloop where installed: one agent per node carries every app's traffic, so its CPU per
    # request counts more than the few MB uvloop adds to one process.
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                        help="auto (default): uvloop if installed; uvloop: less CPU per request; "
                        "asyncio: less memory")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    args = parser.parse_args(argv)
    if not args.socket and args.grpc_port is None:
        parser.error("with --socket '' the local API needs --grpc-port")
    if args.socket and not hasattr(socket, "AF_UNIX"):
        parser.error("this platform has no Unix sockets: pass --socket '' --grpc-port PORT")
    if args.heartbeat_interval <= 0:
        parser.error("--heartbeat-interval must be positive")
    if not 0 <= args.drain_delay <= args.drain_grace:
        parser.error("need 0 <= --drain-delay <= --drain-grace")
    return args


def started(agent: NodeAgent) -> None:
    """Announce the listeners, then shrink the heap: the agent now runs as it will for days."""
    announce(agent)
    settle_memory()


def announce(agent: NodeAgent) -> None:
    """Print the one listening line that tests and the demo wait for."""
    line = {
        "event": "listening",
        "component": "nodeagent",
        "socket": str(agent.local_api.socket_path) if agent.local_api.socket_path else None,
        "grpc": agent.local_api.port,
        "admin": agent.admin_port,
    }
    print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the node agent until SIGTERM; drain every app's listener; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = AgentSettings(
        node_id=args.node_id,
        control_plane=args.control_plane_grpc,
        socket_path=args.socket or None,
        grpc_port=args.grpc_port,
        admin_port=args.admin_port,
        cache_dir=args.cache_dir,
        heartbeat_interval=args.heartbeat_interval,
        drain_delay=args.drain_delay,
        drain_grace=args.drain_grace,
    )
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
            result = runner.run(run(settings, on_started=started))
    except OSError as error:  # the socket is taken, the port is in use...
        log.error("cannot start: %s", error)
        return 1
    if result is not None:
        log.info("drained: %d completed, %d cancelled", result.completed, result.cancelled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
