"""Data-path overhead: direct, through nginx as a sidecar (the anchor), and through our sidecar.

    python -m bench.proxy_overhead [--seconds 5] [--json FILE]

Every target forwards to the same upstream (nginx answering 200 "ok"), and the same wrk
loads each one at 1 and at 16 connections. Throughput is reported as a ratio to nginx measured
in the same run, because absolute numbers on a shared 2-core machine move from run to run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from .loadgen import LoadResult, run_wrk
from .nginx import Nginx
from .procs import machine, rss_mb, start_component, stop

TOKEN = "bench-token"
SERVICE = "bench"


def sidecar_config(upstream_port: int) -> dict:
    return {
        "routes": {"hosts": ["upstream"], "http": [{"route": [{"destination": {"host": "upstream", "subset": "v1"}}]}]},
        "clusters": {"upstream": {"v1": [f"127.0.0.1:{upstream_port}"]}},
        "retries": {"attempts": 0},
    }


def put_config(http_port: int, config: dict) -> None:
    from urllib.request import Request, urlopen

    request = Request(
        f"http://127.0.0.1:{http_port}/v1/services/{SERVICE}/config",
        data=json.dumps(config).encode(), method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urlopen(request, timeout=5) as response:
        assert response.status == 200, response.status


def wait_ready(admin_port: int, timeout: float = 15.0) -> None:
    from urllib.error import URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError("the sidecar never became ready")


def measure(seconds: float) -> dict:
    results: dict = {"machine": machine(), "seconds_per_run": seconds, "targets": {}}
    with ExitStack() as stack:
        upstream = stack.enter_context(Nginx.upstream())
        anchor = stack.enter_context(Nginx.proxy_to(upstream.port))
        db = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "cp.db"
        controlplane, cp = start_component(
            "reference.controlplane", "--http-port", "0", "--grpc-port", "0", "--db", str(db), "--token", TOKEN,
        )
        stack.callback(stop, controlplane)
        put_config(cp["http"], sidecar_config(upstream.port))
        sidecar, sc = start_component(
            "reference.sidecar", "--service", SERVICE, "--inbound-port", "0", "--outbound-port", "0",
            "--admin-port", "0", "--app-address", f"127.0.0.1:{upstream.port}",
            "--control-plane", f"http://127.0.0.1:{cp['http']}",
        )
        stack.callback(stop, sidecar)
        wait_ready(sc["admin"])
        time.sleep(0.5)
        results["sidecar_idle_rss_mb"] = round(rss_mb(sidecar.pid), 1)
        targets = {
            "direct": (f"http://127.0.0.1:{upstream.port}/", {}),
            "nginx": (f"http://127.0.0.1:{anchor.port}/", {}),
            "sidecar": (f"http://127.0.0.1:{sc['outbound']}/", {"Host": "upstream"}),
        }
        for name, (url, headers) in targets.items():
            runs = {}
            for connections in (1, 16):
                run_wrk(url, connections=connections, seconds=1, headers=headers)  # warm-up
                runs[connections] = run_wrk(url, connections=connections, seconds=seconds, headers=headers)
            results["targets"][name] = {str(c): vars(r) | {"rps": round(r.rps)} for c, r in runs.items()}
        results["sidecar_loaded_rss_mb"] = round(rss_mb(sidecar.pid), 1)
    results["ratios"] = ratios(results["targets"])
    return results


def ratios(targets: dict) -> dict:
    out = {}
    for connections in ("1", "16"):
        direct, nginx, ours = (targets[name][connections] for name in ("direct", "nginx", "sidecar"))
        out[connections] = {
            "sidecar_rps_over_nginx": round(ours["rps"] / nginx["rps"], 3),
            "sidecar_added_p50_ms": round(ours["p50_ms"] - direct["p50_ms"], 3),
            "sidecar_added_p99_ms": round(ours["p99_ms"] - direct["p99_ms"], 3),
            "nginx_added_p50_ms": round(nginx["p50_ms"] - direct["p50_ms"], 3),
            "nginx_added_p99_ms": round(nginx["p99_ms"] - direct["p99_ms"], 3),
        }
    return out


def table(results: dict) -> str:
    lines = [f"{'target':<9} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>6}"]
    for name, runs in results["targets"].items():
        for connections, run in runs.items():
            lines.append(
                f"{name:<9} {connections:>5} {run['rps']:>8} {run['p50_ms']:>8.3f} {run['p99_ms']:>8.3f}"
                f" {run['p999_ms']:>9.3f} {run['errors'] + run['non_2xx_3xx']:>6}"
            )
    for connections, r in results["ratios"].items():
        lines.append(
            f"{connections:>2} conn: sidecar/nginx throughput {r['sidecar_rps_over_nginx']:.3f}x, "
            f"added p50 {r['sidecar_added_p50_ms']:.3f} ms, added p99 {r['sidecar_added_p99_ms']:.3f} ms"
        )
    lines.append(f"sidecar RSS: idle {results['sidecar_idle_rss_mb']} MB, after load {results['sidecar_loaded_rss_mb']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured wrk run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = measure(args.seconds)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
