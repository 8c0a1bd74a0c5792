"""Resource cost against the number of apps: N sidecars, or one node agent serving N apps.

The apps themselves are not started: the paced client plays all N of them, sending each app's
outbound calls to that app's helper (its own sidecar, or its listener on the shared node
agent). Every helper forwards to the same nginx upstream, so only the helpers differ. The
total load is fixed (200 requests/s by default) and spread evenly, so N apps share it: what
grows with N is the helpers' baseline, not the traffic.
"""

from __future__ import annotations

import time
from typing import Any

from ..mesh import UPSTREAM_HOST, Helper, Lab, register_apps
from ..nginx import Nginx
from ..pacer import Target, run_paced
from ..procs import cpu_seconds, pss_mb, rss_mb
from ..progress import Progress
from ..scenario import Scenario, Table, register
from ..svg import Series, line_chart

PATTERNS = ("sidecars", "nodeagent")
LABELS = {"sidecars": "sidecars (one per app)", "nodeagent": "node agent (one for all)"}

# Cited, not measured: Envoy in a real cluster, from the project's own published benchmark.
ISTIO = {
    "source": "https://istio.io/v1.24/docs/ops/deployment/performance-and-scalability/",
    "version": "Istio 1.24",
    "load": "1000 HTTP requests per second through the proxy, 1 KB payload each",
    "proxies": {
        "sidecar": {"label": "Istio 1.24 Envoy sidecar, 2 worker threads (cited)", "vcpu": 0.20, "memory_mb": 60},
        "ztunnel": {"label": "Istio 1.24 ztunnel (cited)", "vcpu": 0.06, "memory_mb": 12},
    },
}


@register
class ResourceCost(Scenario):
    name = "resource_cost"
    title = "Resource cost against the number of apps"

    def settings(self, quick: bool) -> dict[str, Any]:
        return {
            "counts": [1, 5] if quick else [1, 5, 10, 25, 50],
            "rate_rps": 200,
            "window_seconds": 2 if quick else 10,
            "warmup_seconds": 1 if quick else 2,
            "body_bytes": 1024,
        }

    def steps(self, settings: dict[str, Any]) -> int:
        return 1 + len(settings["counts"]) * (2 + len(PATTERNS))

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        measured: dict[str, list[dict[str, Any]]] = {pattern: [] for pattern in PATTERNS}
        with Lab() as lab:
            with progress.step("starting nginx, control plane, node agent"):
                upstream = lab.enter(Nginx.upstream(body_bytes=settings["body_bytes"]))
                version = lab.start_control_plane(upstream.port)
                agent = lab.start_node_agent()
            sidecars: list[Helper] = []
            agent_ports: list[int] = []
            # N grows step by step; the helpers started for a smaller N stay and are reused,
            # so at each step exactly N sidecars and N registered apps exist.
            for index, n in enumerate(settings["counts"]):
                with progress.step(f"N={n}: starting sidecars {len(sidecars) + 1}..{n}"):
                    sidecars += lab.start_sidecars(len(sidecars) + 1, n - len(sidecars), upstream.port, version)
                with progress.step(f"N={n}: registering apps {len(agent_ports) + 1}..{n} with the node agent"):
                    ids = [f"bench-app-{k}" for k in range(len(agent_ports) + 1, n + 1)]
                    agent_ports += register_apps(agent, ids, version)
                helpers = {
                    "sidecars": ([s.pid for s in sidecars], [Target(s.outbound, UPSTREAM_HOST) for s in sidecars]),
                    "nodeagent": ([agent.pid], [Target(port, UPSTREAM_HOST) for port in agent_ports]),
                }
                # Alternate which pattern goes first (Rule 3), so drift favours neither.
                order = PATTERNS if index % 2 == 0 else PATTERNS[::-1]
                for pattern in order:
                    with progress.step(f"N={n}: {settings['rate_rps']} req/s through the {pattern}"):
                        pids, targets = helpers[pattern]
                        measured[pattern].append(measure(n, pids, targets, settings))
        return {
            "patterns": measured,
            "ratios": {
                str(s["apps"]): {
                    "rss_total": round(s["rss_mb_total"] / a["rss_mb_total"], 2),
                    "pss_total": round(s["pss_mb_total"] / a["pss_mb_total"], 2),
                    "cpu_total": round(s["vcpu"] / a["vcpu"], 2) if a["vcpu"] else 0.0,
                }
                for s, a in zip(measured["sidecars"], measured["nodeagent"])
            },
            "cited": ISTIO,
        }

    def table(self, result: dict[str, Any]) -> Table:
        rows = []
        for pattern in PATTERNS:
            for run in result["patterns"][pattern]:
                ratio = result["ratios"][str(run["apps"])]
                rows.append([
                    LABELS[pattern], str(run["apps"]), str(run["helpers"]), f"{run['rps']:,.0f}",
                    f"{run['rss_mb_per_helper']:.1f}", f"{run['rss_mb_total']:,.1f}", f"{run['pss_mb_total']:,.1f}",
                    f"{run['vcpu']:.3f}", f"{run['vcpu_per_1000_rps']:.3f}",
                    f"{ratio['rss_total']:.2f}" if pattern == "sidecars" else "1.00",
                    f"{ratio['cpu_total']:.2f}" if pattern == "sidecars" else "1.00",
                    f"{run['p99_ms']:.2f}", str(run["errors"]),
                ])
        cited = result["cited"]
        for proxy in cited["proxies"].values():
            rows.append([proxy["label"], "–", "1", "1,000", f"{proxy['memory_mb']:.1f}", "–", "–",
                         f"{proxy['vcpu']:.3f}", f"{proxy['vcpu']:.3f}", "–", "–", "–", "–"])
        settings = result["settings"]
        return Table(
            headers=["Helpers", "Apps (N)", "Helper processes", "Load (req/s)", "RSS per helper (MB)",
                     "RSS total (MB)", "PSS total (MB)", "CPU total (vCPU)", "CPU per 1000 req/s (vCPU)",
                     "RSS total ÷ node agent (×)", "CPU total ÷ node agent (×)", "Client p99 (ms)", "Errors"],
            rows=rows, align="lrrrrrrrrrrrr",
            notes=[
                f"{settings['rate_rps']} requests/s in total, spread round-robin over the N apps by one "
                f"open-loop client, {settings['body_bytes']:,}-byte responses; CPU is the helpers' user + "
                f"system time over a {settings['window_seconds']} s window, after a "
                f"{settings['warmup_seconds']} s warm-up. RSS counts shared pages once per process; PSS "
                f"splits them, so PSS total is what the processes take together. Client p99 is measured "
                f"from each request's scheduled send time.",
                f"The last rows are **cited, not measured**: [{cited['version']}: performance and "
                f"scalability]({cited['source']}), {cited['load']}. Envoy and ztunnel in a cluster are "
                f"not Python on loopback; compare shapes, not absolute numbers.",
            ],
        )

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        counts = [run["apps"] for run in result["patterns"]["sidecars"]]
        rate = result["settings"]["rate_rps"]

        def series(key: str) -> list[Series]:
            return [Series(LABELS[p], [run[key] for run in result["patterns"][p]]) for p in PATTERNS]

        return {
            "resource_cost_memory": line_chart(
                title=f"Memory of the helpers at {rate} req/s in total (lower is better)",
                x_label="Apps on the machine (N)", y_label="Total RSS of the helpers (MB)",
                x=counts, series=series("rss_mb_total")),
            "resource_cost_cpu": line_chart(
                title=f"CPU of the helpers at {rate} req/s in total (lower is better)",
                x_label="Apps on the machine (N)", y_label="Total CPU of the helpers (vCPU)",
                x=counts, series=series("vcpu")),
        }


def measure(n: int, pids: list[int], targets: list[Target], settings: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then load the helpers for one window and read their CPU time and memory."""
    rate = settings["rate_rps"]
    if settings["warmup_seconds"] > 0:
        run_paced(targets, rate=rate, seconds=settings["warmup_seconds"])
    before = sum(cpu_seconds(pid) for pid in pids)
    start = time.monotonic()
    load = run_paced(targets, rate=rate, seconds=settings["window_seconds"])
    wall = time.monotonic() - start
    cpu = sum(cpu_seconds(pid) for pid in pids) - before
    rss = [rss_mb(pid) for pid in pids]
    pss = [pss_mb(pid) for pid in pids]
    vcpu = cpu / wall
    return {
        "apps": n,
        "helpers": len(pids),
        "rps": round(load.rps, 1),
        "requests": load.ok,
        "errors": load.errors + (load.scheduled - load.ok - load.errors),
        "p50_ms": round(load.p50_ms, 3),
        "p99_ms": round(load.p99_ms, 3),
        "window_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 3),
        "vcpu": round(vcpu, 4),
        "vcpu_per_1000_rps": round(vcpu / (load.rps / 1000), 4) if load.rps else 0.0,
        "rss_mb_total": round(sum(rss), 1),
        "rss_mb_per_helper": round(sum(rss) / len(rss), 1),
        "pss_mb_total": round(sum(pss), 1),
    }
