"""`python -m reference app`: run the reviews app until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import sys

from aiohttp import web

from reference.app.reviews import VERSIONS, check_fail_rate, create_app
from reference.drain import DrainController, serve

# The service whose routes the app's outbound calls follow when it registers with a node agent.
SERVICE = "reviews"


def rate(text: str) -> float:
    """argparse type: a failure rate in [0, 1]."""
    try:
        return check_fail_rate(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def port_number(text: str) -> int:
    """argparse type: a fixed TCP port, 1 to 65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference app",
        description="The sample reviews app: v1 without ratings, v2 black stars, v3 red stars.",
    )
    parser.add_argument("--version", choices=VERSIONS, default="v1", help="default: v1")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=9080, help="0 picks a free port; default: 9080")
    parser.add_argument("--fail-rate", type=rate, default=0.0,
                        help="share of /reviews requests answered 503 (0..1); default: 0")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="simulated work per /reviews request; default: 0")
    parser.add_argument("--seed", type=int, help="seed for the failure draws, for repeatable runs")
    parser.add_argument("--admin-port", type=port_number,
                        help="loopback port for POST /drain, the preStop hook; default: none")
    parser.add_argument("--drain-delay", type=float,
                        help="seconds to keep serving after a drain starts; default: drain.py's")
    parser.add_argument("--drain-grace", type=float,
                        help="seconds before in-flight requests are cut off; default: drain.py's")
    parser.add_argument("--node-agent", metavar="SOCKET",
                        help="register with the node agent on this Unix socket while running")
    parser.add_argument("--app-id", help="id to register with; default: HOSTNAME-PID")
    return parser


async def run(args: argparse.Namespace, controller: DrainController) -> None:
    app = create_app(
        args.version,
        fail_rate=args.fail_rate,
        rng=random.Random(args.seed) if args.seed is not None else None,
        latency_ms=args.latency_ms,
        probes=False,
    )
    if args.node_agent:
        # Imported here: only the node-agent pattern needs gRPC; the sidecar pattern's app
        # stays plain HTTP and starts faster.
        from reference.app.registration import REGISTRATION, node_agent_registration

        app_id = args.app_id or f"{socket.gethostname()}-{os.getpid()}"
        app.cleanup_ctx.append(node_agent_registration(args.node_agent, app_id, SERVICE))

    def announce(runner: web.AppRunner) -> None:
        line: dict[str, object] = {
            "event": "listening",
            "component": "app",
            "version": args.version,
            "port": runner.addresses[0][1],
        }
        if args.admin_port is not None:
            line["admin"] = args.admin_port
        if args.node_agent:
            line["outbound"] = app[REGISTRATION].outbound_address
        print(json.dumps(line), flush=True)

    await serve(
        app, controller, host=args.host, port=args.port, admin_port=args.admin_port,
        on_started=announce,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.latency_ms < 0:
        parser.error("--latency-ms must be >= 0")
    timing = {"delay": args.drain_delay, "grace": args.drain_grace}
    try:
        controller = DrainController(**{k: v for k, v in timing.items() if v is not None})
    except ValueError as error:
        parser.error(str(error))
    # stdout carries the one "listening" line that scripts wait for; logs go to stderr.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args, controller))
    return 0


if __name__ == "__main__":
    sys.exit(main())
