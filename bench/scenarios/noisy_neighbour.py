"""Noisy neighbour: one app floods through its helper; what do the other apps' calls see?

N quiet apps (4 by default) send open-loop paced calls, 50 requests/s each, through their
helpers; one more app floods through its own helper with wrk (closed loop, bounded in time), at
a few and at many keep-alive connections. With sidecars every app has a helper process of its
own, so the flood goes through a process the quiet apps do not use; with the node agent every
app has a listener on the same agent, so the flood and the quiet calls share one event loop.
Each pattern is measured without the flood (its baseline) and with it, and the quiet apps'
latency under the flood is compared with that baseline from the same run.

Nothing is pinned to a core. wrk, the paced client (this process), the helpers and the nginx
upstream share the machine's cores, as pods on a node without CPU limits would, so the scenario
records the CPU each of them used in every window: on two cores the sidecar pattern is not free
of the flood either, it only meets it in the kernel's scheduler instead of in a shared event
loop. wrk's rate records how much flood each pattern let through, so a pattern cannot look calm
merely because it let less flood through.

The windows (each pattern without a flood and with each flood) run in one order and then in
the reverse order, repeat after repeat (ABBA), so drift over the run favours none of them.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..loadgen import LoadResult, run_wrk
from ..mesh import UPSTREAM_HOST, Lab, register_apps
from ..nginx import Nginx
from ..pacer import PacedResult, Target, percentile, run_paced
from ..procs import cpu_seconds
from ..progress import Progress
from ..scenario import Scenario, Table, register
from ..svg import Series, bar_chart

PATTERNS = ("sidecars", "nodeagent")
LABELS = {"sidecars": "sidecars (one per app)", "nodeagent": "node agent (one for all)"}
SHORT = {"sidecars": "sidecars", "nodeagent": "node agent"}
# Where the CPU went during a window; wrk only runs in the flood windows.
ROLES = ("helpers", "wrk", "nginx", "paced_client")
ROLE_LABELS = {"helpers": "helpers", "wrk": "wrk (the flood)", "nginx": "nginx upstream",
               "paced_client": "paced client"}
# wrk keeps flooding this long after the last paced request was due, so that request's answer
# still meets the flood.
FLOOD_TAIL_SECONDS = 0.2


@register
class NoisyNeighbour(Scenario):
    name = "noisy_neighbour"
    title = "Noisy neighbour: one app floods, the others' latency"

    def settings(self, quick: bool) -> dict[str, Any]:
        return {
            # Fewer apps and one flood level in a quick run: starting the Python helpers and
            # wrk's shortest run (1 s) are most of its few seconds.
            "quiet_apps": 3 if quick else 4,
            "rate_per_app_rps": 50,
            # The flood's concurrency: a shared event loop serves its connections in turn, so
            # how many the noisy app keeps busy is what the quiet apps queue behind.
            "flood_connections": [64] if quick else [8, 64],
            "window_seconds": 0.4 if quick else 4,
            # wrk starts this long before the paced window, so the window meets a flood at full speed.
            "flood_lead_seconds": 0.2 if quick else 0.5,
            "repeats": 1 if quick else 2,
            "warmup_seconds": 0.1 if quick else 2,
            "body_bytes": 1024,
        }

    def steps(self, settings: dict[str, Any]) -> int:
        warmup = 1 if settings["warmup_seconds"] > 0 else 0
        return 1 + warmup + settings["repeats"] * len(PATTERNS) * (1 + len(settings["flood_connections"]))

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        quiet = settings["quiet_apps"]
        # A window is a pattern and a flood: 0 connections is the baseline, without one.
        plan = [(pattern, c) for pattern in PATTERNS for c in (0, *settings["flood_connections"])]
        windows: dict[tuple[str, int], list[dict[str, Any]]] = {cell: [] for cell in plan}
        order: list[str] = []
        with Lab() as lab:
            with progress.step(f"starting nginx, control plane, {quiet + 1} sidecars, node agent with {quiet + 1} apps"):
                upstream = lab.enter(Nginx.upstream(body_bytes=settings["body_bytes"]))
                version = lab.start_control_plane(upstream.port)
                sidecars = lab.start_sidecars(1, quiet + 1, upstream.port, version)
                agent = lab.start_node_agent()
                agent_ports = register_apps(agent, [f"bench-app-{k}" for k in range(1, quiet + 2)], version)
            # App k (the last one is the noisy app) calls its own sidecar, or its own listener
            # on the agent; both patterns stay up for the whole run and take turns.
            setups = {
                "sidecars": ([Target(s.outbound, UPSTREAM_HOST) for s in sidecars], [s.pid for s in sidecars]),
                "nodeagent": ([Target(port, UPSTREAM_HOST) for port in agent_ports], [agent.pid]),
            }
            if settings["warmup_seconds"] > 0:
                with progress.step("warming up every app's path through both patterns"):
                    every = [target for targets, _ in setups.values() for target in targets]
                    run_paced(every, rate=quiet * settings["rate_per_app_rps"], seconds=settings["warmup_seconds"])
            for repeat in range(settings["repeats"]):
                for pattern, connections in plan if repeat % 2 == 0 else plan[::-1]:
                    order.append(f"{pattern}/{connections}")
                    with progress.step(f"repeat {repeat + 1}: {SHORT[pattern]}, {flood_label(connections)}"):
                        targets, helper_pids = setups[pattern]
                        windows[pattern, connections].append(measure_window(
                            targets[:quiet], targets[quiet], connections,
                            {"helpers": helper_pids, "nginx": upstream.pids}, settings))
        patterns = {}
        for pattern in PATTERNS:
            baseline = summarise(windows[pattern, 0], quiet)
            floods = {str(c): summarise(windows[pattern, c], quiet) for c in settings["flood_connections"]}
            patterns[pattern] = {
                "baseline": baseline,
                "flood": floods,
                "flood_over_baseline": {
                    str(c): flood_ratios(windows[pattern, 0], windows[pattern, c], baseline, floods[str(c)])
                    for c in settings["flood_connections"]
                },
            }
        return {"patterns": patterns, "order": order}

    def table(self, result: dict[str, Any]) -> Table:
        rows = []
        for pattern, by_flood in result["patterns"].items():
            cells = [("0", by_flood["baseline"], {"p50": 1.0, "p99": 1.0})]
            cells += [(c, run, by_flood["flood_over_baseline"][c]) for c, run in by_flood["flood"].items()]
            for connections, run, ratio in cells:
                flood = run["flood"]
                per_window = run["p99_ms_per_window"]
                rows.append([
                    LABELS[pattern], flood_label(int(connections)), f"{run['requests']:,}",
                    f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}", f"{min(per_window):.2f}–{max(per_window):.2f}",
                    f"{run['max_ms']:.2f}", f"{ratio['p50']:.2f}", f"{ratio['p99']:.2f}", str(run["errors"]),
                    f"{flood['rps']:,.0f}" if flood else "–", f"{flood['p50_ms']:.2f}" if flood else "–",
                    str(flood["errors"]) if flood else "–",
                    *(f"{run['cpu_vcpu'][role]:.2f}" for role in ROLES),
                ])
        s = result["settings"]
        return Table(
            headers=["Helpers", "Noisy neighbour", "Quiet requests (all runs)", "Quiet p50 (ms)",
                     "Quiet p99 (ms)", "Quiet p99 range over windows (ms)", "Quiet max (ms)",
                     "Quiet p50 ÷ baseline (×)", "Quiet p99 ÷ baseline (×)", "Quiet errors",
                     "Flood through (req/s)", "Flood p50 (ms)", "Flood errors",
                     "CPU helpers (vCPU)", "CPU wrk (vCPU)", "CPU nginx (vCPU)", "CPU paced client (vCPU)"],
            rows=rows, align="llrrrrrrrrrrrrrrr",
            notes=[
                f"{s['quiet_apps']} quiet apps, each sending {s['rate_per_app_rps']} requests/s open loop "
                f"through its own helper; latency counts from each request's scheduled send time, and "
                f"the percentiles pool every quiet request of a row's {s['repeats']} window(s) of "
                f"{s['window_seconds']:g} s (each app's own p99 is in results.json). The noisy app floods "
                f"its own helper with wrk (closed loop, 1 thread, keep-alive connections as shown), "
                f"starting {s['flood_lead_seconds']:g} s before each window; its rate and p50 (a service "
                f"time at that concurrency) are the median over the windows. All apps call one nginx "
                f"upstream with {s['body_bytes']:,}-byte responses.",
                "Nothing is pinned: wrk, the paced client, the helpers and nginx share the machine's cores. "
                "The CPU columns are each one's user + system time over the window, median over repeats; "
                "helpers are all the sidecars (the noisy one included) or the one node agent.",
            ],
        )

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        patterns = result["patterns"]
        floods = [str(c) for c in result["settings"]["flood_connections"]]
        top = floods[-1]

        def latency(key: str) -> list[Series]:
            series = [Series("no flood", [patterns[p]["baseline"][key] for p in patterns])]
            return series + [Series(f"flood, {c} connections", [patterns[p]["flood"][c][key] for p in patterns])
                             for c in floods]

        # The CPU split of the baselines and of the heaviest flood: where the cores went.
        cells = [(p, run, label) for p in patterns
                 for run, label in ((patterns[p]["baseline"], "no flood"), (patterns[p]["flood"][top], f"{top} conn"))]
        return {
            "noisy_neighbour_p99": bar_chart(
                title="Quiet apps' p99 latency, without and with one app flooding (lower is better)",
                x_label="Helpers", y_label="p99 latency of the quiet apps (ms)",
                categories=[SHORT[p] for p in patterns], series=latency("p99_ms")),
            "noisy_neighbour_p50": bar_chart(
                title="Quiet apps' median latency, without and with one app flooding (lower is better)",
                x_label="Helpers", y_label="p50 latency of the quiet apps (ms)",
                categories=[SHORT[p] for p in patterns], series=latency("p50_ms")),
            "noisy_neighbour_cpu": bar_chart(
                title=f"Where the CPU went: no flood, and a flood at {top} connections",
                x_label="Helpers, and the noisy app's flood", y_label="CPU used (vCPU)",
                categories=[f"{SHORT[p]}, {label}" for p, _, label in cells],
                series=[Series(ROLE_LABELS[role], [run["cpu_vcpu"][role] for _, run, _ in cells]) for role in ROLES]),
        }


def flood_label(connections: int) -> str:
    return f"flooding, {connections} connections" if connections else "none (baseline)"


def measure_window(quiet: list[Target], noisy: Target, connections: int, pids: dict[str, list[int]],
                   settings: dict[str, Any]) -> dict[str, Any]:
    """One paced window over the quiet apps, with wrk flooding the noisy app's helper unless 0."""
    rate = len(quiet) * settings["rate_per_app_rps"]
    before = {role: sum(cpu_seconds(pid) for pid in role_pids) for role, role_pids in pids.items()}
    own_before = cpu_seconds(os.getpid())
    # wrk is the only child this process waits for during the window (the lab's processes are
    # reaped when it closes), so the children's CPU time grows by exactly wrk's.
    children_before = _children_cpu()
    start = time.monotonic()
    flood: LoadResult | None = None
    if connections == 0:
        paced = run_paced(quiet, rate=rate, seconds=settings["window_seconds"])
    else:
        seconds = max(1, math.ceil(settings["flood_lead_seconds"] + settings["window_seconds"] + FLOOD_TAIL_SECONDS))
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(run_wrk, f"http://127.0.0.1:{noisy.port}/", connections=connections,
                                 seconds=seconds, headers={"Host": noisy.host})
            time.sleep(settings["flood_lead_seconds"])
            paced = run_paced(quiet, rate=rate, seconds=settings["window_seconds"])
            flood = future.result()
    wall = time.monotonic() - start
    cpu = {role: sum(cpu_seconds(pid) for pid in role_pids) - before[role] for role, role_pids in pids.items()}
    cpu["wrk"] = _children_cpu() - children_before
    # The paced client is this process: its event loop, plus a waiting thread that costs nothing.
    cpu["paced_client"] = cpu_seconds(os.getpid()) - own_before
    return {"paced": paced, "flood": flood, "vcpu": {role: cpu[role] / wall for role in ROLES}}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarise(windows: list[dict[str, Any]], quiet: int) -> dict[str, Any]:
    """The quiet apps' requests pooled over the windows, per app too; the flood; the CPU split."""
    runs: list[PacedResult] = [w["paced"] for w in windows]
    samples = [sample for run in runs for sample in run.samples]
    latencies = sorted(s.latency_ms for s in samples if s.ok)
    per_app = [percentile(sorted(s.latency_ms for s in samples if s.ok and s.target == app), 99)
               for app in range(quiet)]
    floods: list[LoadResult] = [w["flood"] for w in windows if w["flood"] is not None]
    return {
        "windows": len(runs),
        "requests": sum(run.scheduled for run in runs),
        "ok": len(latencies),
        "errors": sum(run.scheduled for run in runs) - len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(latencies[-1] if latencies else 0.0, 3),
        "p99_ms_per_window": [round(run.p99_ms, 3) for run in runs],
        "p99_ms_per_app": [round(value, 3) for value in per_app],
        "worst_app_p99_ms": round(max(per_app), 3),
        "flood": summarise_flood(floods) if floods else None,
        "cpu_vcpu": {role: round(statistics.median(w["vcpu"][role] for w in windows), 3) for role in ROLES},
    }


def summarise_flood(floods: list[LoadResult]) -> dict[str, Any]:
    """How much of the flood the pattern let through, and how the flooding app itself fared."""
    rps = [f.rps for f in floods]
    return {
        "runs": len(floods),
        "connections": floods[0].connections,
        "requests": sum(f.requests for f in floods),
        "rps": round(statistics.median(rps), 1),
        "rps_min": round(min(rps), 1),
        "rps_max": round(max(rps), 1),
        "p50_ms": round(statistics.median(f.p50_ms for f in floods), 3),
        "p99_ms": round(statistics.median(f.p99_ms for f in floods), 3),
        "errors": sum(f.errors + f.non_2xx_3xx for f in floods),
    }


def flood_ratios(baseline_windows: list[dict[str, Any]], flood_windows: list[dict[str, Any]],
                 baseline: dict[str, Any], flood: dict[str, Any]) -> dict[str, Any]:
    """Quiet latency with the flood over without it: pooled, and per repeat for the spread."""

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    return {
        "p50": ratio(flood["p50_ms"], baseline["p50_ms"]),
        "p99": ratio(flood["p99_ms"], baseline["p99_ms"]),
        "max": ratio(flood["max_ms"], baseline["max_ms"]),
        # Each repeat's flood window against the same repeat's baseline (Rule 3).
        "p99_per_repeat": [ratio(f["paced"].p99_ms, b["paced"].p99_ms)
                           for b, f in zip(baseline_windows, flood_windows)],
    }
