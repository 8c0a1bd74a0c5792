"""`python -m reference sidecar`: run one sidecar until SIGTERM, then drain and exit 0.

    python -m reference sidecar --service productpage --app-address 127.0.0.1:9080 \\
        --control-plane http://127.0.0.1:7070 --cache /tmp/productpage.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from reference.proxy_config import ProxyConfigError, parse_endpoint
from reference.runtime import EVENT_LOOPS, event_loop_factory, settle_memory

if TYPE_CHECKING:
    from reference.sidecar.app import Ports

# asyncio and aiohttp are imported in main(), after the arguments are known: see skip_tls().


def port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def address(text: str) -> str:
    """argparse type: host:port."""
    try:
        parse_endpoint("--app-address", text)
    except ProxyConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference sidecar",
        description="One proxy next to one app: inbound to the app, outbound to other services "
        "(routed by the Host field), admin on 127.0.0.1. Ports follow Istio's.",
    )
    parser.add_argument("--service", required=True, help="the service whose config to fetch")
    parser.add_argument("--app-address", type=address, default="127.0.0.1:9080",
                        help="host:port of the local app; default: 127.0.0.1:9080")
    parser.add_argument("--inbound-host", default="0.0.0.0", help="default: 0.0.0.0")
    parser.add_argument("--inbound-port", type=port, default=15006, help="default: 15006")
    parser.add_argument("--outbound-host", default="127.0.0.1",
                        help="default: 127.0.0.1 (only the app next to it should call out)")
    parser.add_argument("--outbound-port", type=port, default=15001, help="default: 15001")
    parser.add_argument("--admin-port", type=port, default=15000,
                        help="always bound to 127.0.0.1; default: 15000")
    parser.add_argument("--control-plane", default="http://127.0.0.1:7070",
                        help="base URL of the control plane's HTTP API")
    parser.add_argument("--cache", metavar="PATH",
                        help="file keeping the last good config, served while the control "
                        "plane is down")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds one long poll may wait for a change; default: 30")
    parser.add_argument("--poll-interval", type=float, default=0.0, metavar="SECONDS",
                        help="poll every SECONDS instead of long-polling (the push the default "
                        "gives); 0: long-poll")
    parser.add_argument("--drain-delay", type=float, default=5.0,
                        help="on SIGTERM, seconds to keep serving while endpoints are removed")
    parser.add_argument("--drain-grace", type=float, default=25.0,
                        help="on SIGTERM, seconds before requests still running are cut off")
    # asyncio's own loop by default: a sidecar's memory is paid once per pod, and uvloop (with
    # the OpenSSL it loads) adds to each. The lab's data path measures both.
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="asyncio",
                        help="asyncio (default): less memory per sidecar; uvloop: "
                        "less CPU and latency per request; auto: uvloop if installed")
    parser.add_argument("--no-fast-lane", dest="fast_lane", action="store_false",
                        help="serve every outbound request on a task, none from callbacks "
                        "(to measure what the fast lane is worth)")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING...")
    return parser


def started(ports: Ports) -> None:
    """Announce the ports, then shrink the heap: the process now runs as it will for days."""
    announce(ports)
    settle_memory()


def announce(ports: Ports) -> None:
    """Print the one line scripts wait for, with the ports actually bound."""
    line = {"event": "listening", "component": "sidecar",
            "inbound": ports.inbound, "outbound": ports.outbound, "admin": ports.admin}
    print(json.dumps(line), flush=True)


def skip_tls(control_plane: str) -> None:
    """Keep OpenSSL out of a sidecar whose only client connection is plain HTTP."""
    # Every pod carries a sidecar, so its memory counts once per pod. This one speaks plain
    # HTTP to its app and to other services; only an https:// control plane needs TLS. asyncio
    # and aiohttp load `ssl` if it is there and work without it, and not loading it (with
    # libssl and libcrypto) saves about 4 MB of resident memory per sidecar.
    if not control_plane.lower().startswith("https:") and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` now fails


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the sidecar until SIGTERM or preStop, and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wait <= 0:
        parser.error("--wait must be positive")
    if args.poll_interval < 0:
        parser.error("--poll-interval must be 0 or positive")
    loop_factory = event_loop_factory(args.event_loop)  # before skip_tls: uvloop needs ssl
    skip_tls(args.control_plane)
    import asyncio
    import logging

    from reference.drain import DrainController
    from reference.sidecar.app import Sidecar, SidecarOptions, serve

    try:
        drain = DrainController(delay=args.drain_delay, grace=args.drain_grace)
    except ValueError as error:
        parser.error(str(error))
    # stdout carries only the "listening" line; logs go to stderr.
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = SidecarOptions(
        service=args.service,
        app_address=args.app_address,
        control_plane=args.control_plane,
        cache_path=args.cache,
        wait=args.wait,
        poll_interval=args.poll_interval,
        fast_lane=args.fast_lane,
    )

    async def run() -> None:
        await serve(
            Sidecar(options, drain=drain),
            inbound_host=args.inbound_host,
            inbound_port=args.inbound_port,
            outbound_host=args.outbound_host,
            outbound_port=args.outbound_port,
            admin_port=args.admin_port,
            on_started=started,
        )

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
