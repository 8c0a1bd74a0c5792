"""Data-path overhead: the same upstream called directly, through nginx, our sidecar, our node agent.

Every path ends at one nginx upstream answering 200 with a 1 KB body. wrk loads each path at 1
and 16 keep-alive connections; the paths take turns within each round (Rule 3: alternate), and
each ratio compares a path with nginx measured in the same round, before taking the median.

The sidecar runs three times: as it starts by default (asyncio's own event loop); with
`--no-fast-lane`, every request served on a task, which shows what the fast lane is worth; and
with `--event-loop uvloop`, the setting that trades memory for CPU per request, so the table
shows both sides of that trade.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..loadgen import LoadResult, run_wrk
from ..mesh import UPSTREAM_HOST, Lab, register_apps
from ..nginx import Nginx
from ..procs import rss_mb
from ..progress import Progress
from ..scenario import Scenario, Table, register
from ..svg import Series, bar_chart

PATHS = ("direct", "nginx", "sidecar", "sidecar_slow_lane", "sidecar_uvloop", "nodeagent")
LABELS = {"direct": "direct", "nginx": "nginx (anchor)", "sidecar": "sidecar",
          "sidecar_slow_lane": "sidecar, fast lane off", "sidecar_uvloop": "sidecar on uvloop",
          "nodeagent": "node agent"}



@register
class DataPath(Scenario):
    name = "data_path"
    title = "Data-path overhead: one extra hop, four ways"

    def settings(self, quick: bool) -> dict[str, Any]:
        return {
            "connections": [1, 16],
            "seconds": 1 if quick else 5,
            "repeats": 1 if quick else 3,
            "warmup_seconds": 0 if quick else 1,  # a quick run is a smoke run, not a measurement
            "body_bytes": 1024,
            # Idle time after start-up before memory is read: past the settling that follows
            # a helper's first config, as a sidecar waiting for traffic would be.
            "idle_seconds": 0.5 if quick else 2,
        }

    def steps(self, settings: dict[str, Any]) -> int:
        warmups = len(PATHS) if settings["warmup_seconds"] > 0 else 0
        return 1 + warmups + settings["repeats"] * len(settings["connections"]) * len(PATHS)

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        runs: dict[str, dict[int, list[LoadResult]]] = {p: {c: [] for c in settings["connections"]} for p in PATHS}
        with Lab() as lab:
            with progress.step("starting nginx, control plane, three sidecars, node agent"):
                upstream = lab.enter(Nginx.upstream(body_bytes=settings["body_bytes"]))
                anchor = lab.enter(Nginx.proxy_to(upstream.port))
                version = lab.start_control_plane(upstream.port)
                [sidecar] = lab.start_sidecars(1, 1, upstream.port, version)
                [fast] = lab.start_sidecars(2, 1, upstream.port, version,
                                            extra_args=("--event-loop", "uvloop"))
                [slow] = lab.start_sidecars(3, 1, upstream.port, version,
                                            extra_args=("--no-fast-lane",))
                agent = lab.start_node_agent()
                [agent_port] = register_apps(agent, ["bench-app-1"], version)
                time.sleep(settings["idle_seconds"])
                idle = {"sidecar": rss_mb(sidecar.pid), "sidecar_uvloop": rss_mb(fast.pid),
                        "nodeagent": rss_mb(agent.pid),
                        "nginx": sum(rss_mb(pid) for pid in anchor.pids)}
            # The helpers route on the Host header, as an app's outbound call through them would.
            targets = {
                "direct": (upstream.port, {}),
                "nginx": (anchor.port, {}),
                "sidecar": (sidecar.outbound, {"Host": UPSTREAM_HOST}),
                "sidecar_uvloop": (fast.outbound, {"Host": UPSTREAM_HOST}),
                "sidecar_slow_lane": (slow.outbound, {"Host": UPSTREAM_HOST}),
                "nodeagent": (agent_port, {"Host": UPSTREAM_HOST}),
            }
            top = max(settings["connections"])
            for path in PATHS if settings["warmup_seconds"] > 0 else ():
                with progress.step(f"warming up {LABELS[path]}"):
                    port, headers = targets[path]
                    run_wrk(f"http://127.0.0.1:{port}/", connections=top,
                            seconds=settings["warmup_seconds"], headers=headers)
            for round_number in range(settings["repeats"]):
                # Each round starts with a different path, so none is always first or last.
                order = PATHS[round_number % len(PATHS):] + PATHS[:round_number % len(PATHS)]
                for connections in settings["connections"]:
                    for path in order:
                        with progress.step(f"round {round_number + 1}: {LABELS[path]}, {connections} conn"):
                            port, headers = targets[path]
                            runs[path][connections].append(run_wrk(
                                f"http://127.0.0.1:{port}/", connections=connections,
                                seconds=settings["seconds"], headers=headers))
            rss = {"sidecar": rss_mb(sidecar.pid), "sidecar_uvloop": rss_mb(fast.pid),
                   "nodeagent": rss_mb(agent.pid), "nginx": sum(rss_mb(pid) for pid in anchor.pids)}
        return {
            "paths": {path: {str(c): summarise(r) for c, r in by_conn.items()} for path, by_conn in runs.items()},
            "ratios": ratios(runs),
            "rss_mb_idle": {name: round(value, 1) for name, value in idle.items()},
            "rss_mb_after_load": {name: round(value, 1) for name, value in rss.items()},
        }

    def table(self, result: dict[str, Any]) -> Table:
        rows = []
        for path, by_conn in result["paths"].items():
            for conns, run in by_conn.items():
                ratio = result["ratios"][path][conns]
                rows.append([
                    LABELS[path], conns, f"{run['requests']:,}", f"{run['rps']:,.0f}",
                    f"{run['rps_min']:,.0f}–{run['rps_max']:,.0f}",
                    f"{run['p50_ms']:.3f}", f"{run['p99_ms']:.3f}", f"{run['p999_ms']:.3f}",
                    f"{ratio['added_p50_ms_over_direct']:.3f}", f"{ratio['added_p99_ms_over_direct']:.3f}",
                    f"{ratio['rps']:.2f}", f"{ratio['p50']:.2f}", f"{ratio['p99']:.2f}",
                    str(run["errors"]),
                ])
        settings = result["settings"]
        return Table(
            headers=["Path", "Connections", "Requests (all runs)", "Throughput (req/s)",
                     "Range (req/s)", "p50 (ms)", "p99 (ms)", "p99.9 (ms)",
                     "Added p50 vs direct (ms)", "Added p99 vs direct (ms)",
                     "Throughput ÷ nginx (×)", "p50 ÷ nginx (×)", "p99 ÷ nginx (×)", "Errors"],
            rows=rows, align="lrrrrrrrrrrrrr",
            notes=[f"{settings['repeats']} run(s) of {settings['seconds']} s per path and connection count, "
                   f"taking turns; throughput and percentiles are the median over runs; ratios are "
                   f"taken against nginx in the same round, then the median. Closed loop (wrk, "
                   f"1 thread), {settings['body_bytes']:,}-byte responses. Added latency is the "
                   f"path's percentile minus direct's, in the same round. Errors count failed "
                   f"requests and non-2xx answers.",
                   *memory_note(result)],
        )

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        paths = list(result["paths"])
        conns = list(result["paths"][paths[0]])
        top = conns[-1]
        return {
            "data_path_throughput": bar_chart(
                title="Throughput through each path (higher is better)",
                x_label="Path from client to upstream", y_label="Throughput (requests/s)",
                categories=[LABELS[p] for p in paths],
                series=[Series(f"{c} connection{'s' if c != '1' else ''}",
                               [result["paths"][p][c]["rps"] for p in paths]) for c in conns]),
            "data_path_latency": bar_chart(
                title=f"Latency at {top} connections (lower is better)",
                x_label="Path from client to upstream", y_label="Latency (ms)",
                categories=[LABELS[p] for p in paths],
                series=[Series(label, [result["paths"][p][top][key] for p in paths])
                        for label, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"))]),
        }


def memory_note(result: dict[str, Any]) -> list[str]:
    """A line on each helper's resident memory while idle, if the run recorded it."""
    idle = result.get("rss_mb_idle")
    if not idle:
        return []
    parts = [f"{LABELS[name]} {idle[name]:.1f} MB" for name in ("sidecar", "sidecar_uvloop", "nodeagent")
             if name in idle]
    return [f"Resident memory (RSS) while idle, {result['settings']['idle_seconds']:g} s after "
            f"start-up with its config: "
            + ", ".join(parts) + f"; nginx (master and worker) {idle['nginx']:.1f} MB."]


def summarise(runs: list[LoadResult]) -> dict[str, Any]:
    """The median run over repeats, the throughput range, and every request counted."""
    rps = [r.rps for r in runs]
    return {
        "runs": len(runs),
        "requests": sum(r.requests for r in runs),
        "rps": round(statistics.median(rps), 1),
        "rps_min": round(min(rps), 1),
        "rps_max": round(max(rps), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
        "p90_ms": round(statistics.median(r.p90_ms for r in runs), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
        "p999_ms": round(statistics.median(r.p999_ms for r in runs), 3),
        "max_ms": round(max(r.max_ms for r in runs), 3),
        "errors": sum(r.errors + r.non_2xx_3xx for r in runs),
    }


def ratios(runs: dict[str, dict[int, list[LoadResult]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Each path against nginx from the same round (then the median), and its added latency."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for path, by_conn in runs.items():
        out[path] = {}
        for conns, path_runs in by_conn.items():
            pairs = list(zip(path_runs, runs["nginx"][conns], runs["direct"][conns]))

            def median(f) -> float:
                return statistics.median(f(ours, anchor, direct) for ours, anchor, direct in pairs)

            out[path][str(conns)] = {
                "rps": round(median(lambda o, a, d: o.rps / a.rps if a.rps else 0.0), 3),
                "p50": round(median(lambda o, a, d: o.p50_ms / a.p50_ms if a.p50_ms else 0.0), 3),
                "p99": round(median(lambda o, a, d: o.p99_ms / a.p99_ms if a.p99_ms else 0.0), 3),
                "p999": round(median(lambda o, a, d: o.p999_ms / a.p999_ms if a.p999_ms else 0.0), 3),
                "added_p50_ms_over_direct": round(median(lambda o, a, d: o.p50_ms - d.p50_ms), 3),
                "added_p99_ms_over_direct": round(median(lambda o, a, d: o.p99_ms - d.p99_ms), 3),
            }
    return out
