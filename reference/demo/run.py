"""`python -m reference demo sidecar|nodeagent`: the timeline, the live view and the summary."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from reference.demo.processes import ComponentFailed, kill_stragglers
from reference.demo.status import BreakerHistory, ProxyStatus, read_status
from reference.demo.topology import Mesh, start_mesh
from reference.demo.traffic import BREAKER_OPEN, FAILED, Tally, drive
from reference.demo.view import Frame, LiveView

__all__ = ["main"]

TICK = 0.25  # seconds between two readings of the proxy's /metrics and two redraws
FIRST_SPLIT = {"v1": 90, "v2": 10, "v3": 0}
SECOND_SPLIT = {"v1": 50, "v2": 50, "v3": 0}
VICTIM = "v2"


@dataclass
class Demo:
    """One run: the mesh, the traffic tally, the breaker history and the view."""

    mesh: Mesh
    session: aiohttp.ClientSession
    view: LiveView
    duration: float
    started: float = field(default_factory=time.monotonic)
    tally: Tally = field(default_factory=Tally)
    history: BreakerHistory = field(default_factory=BreakerHistory)
    status: ProxyStatus = field(default_factory=ProxyStatus)
    versions: list[int] = field(default_factory=list)
    victim_port: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def event(self, text: str) -> None:
        self.view.event(self.elapsed(), text)


# ----- the timeline: each step acts on the mesh and says what happened -----------------------

async def shift_traffic(demo: Demo) -> str:
    version = await demo.mesh.put_config(demo.session, SECOND_SPLIT)
    demo.versions.append(version)
    return f"PUT v1 50 / v2 50 -> config version {version}; the proxy picks it up by itself"


async def kill_victim(demo: Demo) -> str:
    victim = demo.mesh.upstreams[VICTIM]
    demo.victim_port = victim.ports["port"]
    pid = victim.pid
    await demo.mesh.kill_upstream(VICTIM)
    return (f"SIGKILL reviews {VICTIM} (pid {pid}): its calls fail, its breaker opens, "
            "and what would go to it becomes fast 503s")


async def restart_victim(demo: Demo) -> str:
    await demo.mesh.restart_upstream(VICTIM, demo.victim_port)
    return (f"reviews {VICTIM} is back on port {demo.victim_port}: the next half-open trial "
            "closes its breaker")


@dataclass(frozen=True)
class Step:
    """At `at` (a fraction of the duration) run `action`; from then on the view shows `stage`."""

    at: float
    stage: str
    action: Callable[[Demo], Awaitable[str]]


TIMELINE = (
    Step(1 / 3, "2. split 50/50", shift_traffic),
    Step(2 / 3, f"3. {VICTIM} killed", kill_victim),
    Step(3 / 4, f"4. {VICTIM} back", restart_victim),
)
FIRST_STAGE = "1. split 90/10"


async def run_timeline(demo: Demo, rps: float) -> None:
    """Drive traffic for the whole duration, running each step when its time comes."""
    demo.tally.stage = FIRST_STAGE
    pending = list(TIMELINE)
    running: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    traffic = asyncio.create_task(drive(demo.session, demo.mesh.targets, rps, demo.tally, stop))
    try:
        while demo.elapsed() < demo.duration:
            while pending and demo.elapsed() >= pending[0].at * demo.duration:
                step = pending.pop(0)
                demo.tally.stage = step.stage
                # In the background: a restart takes a moment, and the view keeps going meanwhile.
                running.add(asyncio.create_task(_run_step(demo, step)))
            for task in [task for task in running if task.done()]:
                running.discard(task)
                task.result()  # a step that failed (a restart that did not listen) ends the run
            demo.mesh.check_alive()
            demo.status = await read_status(demo.session, demo.mesh.admin_url)
            for text in demo.history.observe(demo.elapsed(), demo.status):
                demo.event(text)
            demo.view.show(Frame(_title(demo), demo.elapsed(), demo.duration,
                                 demo.tally.stage, demo.tally, demo.status))
            await asyncio.sleep(TICK)
    finally:
        stop.set()
        await traffic
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        demo.view.freeze()


async def _run_step(demo: Demo, step: Step) -> None:
    demo.event(await step.action(demo))


def _title(demo: Demo) -> str:
    return f"Sidecar Lab demo: {demo.mesh.pattern} pattern"


# ----- the summary ----------------------------------------------------------------------------

def _split(counts: dict[str, int]) -> str:
    whole = sum(counts.values()) or 1
    cells = [f"{name} {counts.get(name, 0):>5} {100 * counts.get(name, 0) / whole:5.1f}%"
             for name in ("v1", "v2", "v3")]
    cells += [f"{name} {counts.get(name, 0):>4}" for name in (BREAKER_OPEN, FAILED)]
    return "   ".join(cells)


def summary_lines(demo: Demo, rps: float, codes: dict[str, int]) -> list[str]:
    """The summary printed after shutdown: split per stage, breaker trips, exit codes."""
    tally = demo.tally
    lines = [f"summary: {demo.mesh.pattern} pattern, {demo.duration:g} s at {rps:g} requests/s",
             f"  requests   {sum(tally.total.values())} answered: {tally.served} served, "
             f"{tally.failed} failed"]
    for stage, counts in tally.by_stage.items():
        lines.append(f"  {stage:<17} {_split(counts)}")
    lines.append(f"  {'all stages':<17} {_split(tally.total)}")
    lines.append(f"  config     versions {' -> '.join(map(str, demo.versions))}")
    lines.extend(_breaker_lines(demo))
    lines.append(_shutdown_line(demo, codes))
    return lines


def _breaker_lines(demo: Demo) -> list[str]:
    trip = demo.history.first_trip()
    if trip is None:
        return ["  breaker    no trip seen"]
    first_at, upstream = trip
    closed_at = demo.history.closed_after(first_at, upstream)
    recovered = f"closed again at {closed_at:.1f} s" if closed_at else "still open at the end"
    again = demo.history.reopened(upstream)
    reopened = f", reopened {again}x by failed half-open trials" if again else ""
    lines = [f"  breaker    {upstream} tripped at {first_at:.1f} s{reopened}; {recovered}"]
    fast = demo.tally.fast_503_seconds
    if fast:
        lines.append(f"  fast 503s  {len(fast)} answered by the open breaker without calling "
                     f"{upstream}: median {1000 * statistics.median(fast):.1f} ms, "
                     f"slowest {1000 * max(fast):.1f} ms")
    return lines


def _shutdown_line(demo: Demo, codes: dict[str, int]) -> str:
    bad = {name: code for name, code in codes.items() if code != 0}
    killed = ", ".join(component.name for component in demo.mesh.retired)
    on_purpose = f"; SIGKILLed on purpose: {killed}" if killed else ""
    if bad:
        listed = ", ".join(f"{name} ({code})" for name, code in bad.items())
        return f"  shutdown   FAILED: non-zero exit codes after SIGTERM: {listed}{on_purpose}"
    return f"  shutdown   all {len(codes)} processes exited 0 after SIGTERM{on_purpose}"


# ----- the command ----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reference demo",
        description="Start a control plane, reviews v1/v2/v3 and one proxy pattern on 127.0.0.1, "
        "drive traffic through it, shift the split, kill an upstream, and watch it all live.",
    )
    parser.add_argument("pattern", choices=("sidecar", "nodeagent"),
                        help="one proxy per app (sidecar) or one agent per host (nodeagent)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of traffic (default: %(default)g; at least 3)")
    parser.add_argument("--rps", type=float, default=50.0,
                        help="requests per second through the proxy (default: %(default)g)")
    parser.add_argument("--no-color", action="store_true", help="plain text, no ANSI colours")
    args = parser.parse_args(argv)
    if args.duration < 3:
        parser.error("--duration must be at least 3 seconds, to leave time for every stage")
    if not 0 < args.rps <= 1000:
        parser.error("--rps must be in (0, 1000]")
    return args


def print_endpoints(mesh: Mesh) -> None:
    """Where to point curl while the demo runs."""
    print(f"  control plane  {mesh.control_plane_url}  (token: cat {mesh.workdir / 'token'})\n"
          f"  proxy admin    {mesh.admin_url}  (/config, /metrics, /readyz)\n"
          f"  traffic to     {', '.join(mesh.targets)}  (Host: reviews)", flush=True)


async def demo_main(args: argparse.Namespace) -> int:
    """Start the mesh, run the timeline, stop everything, print the summary; the exit status."""
    view = LiveView(color=not args.no_color and "NO_COLOR" not in os.environ)
    status = 0
    _cancel_on_signals()
    with tempfile.TemporaryDirectory(prefix="sidecarlab-demo-") as workdir:
        # trust_env=False: no *_proxy variable may send the demo's loopback calls elsewhere.
        async with aiohttp.ClientSession(trust_env=False) as session:
            print(f"starting the {args.pattern} pattern on 127.0.0.1 (logs in {workdir}); "
                  "Ctrl-C stops everything cleanly", flush=True)
            try:
                mesh, version = await start_mesh(args.pattern, Path(workdir), session, FIRST_SPLIT)
            except ComponentFailed as error:
                print(f"demo: {error}", file=sys.stderr)
                return 1
            print_endpoints(mesh)
            demo = Demo(mesh, session, view, args.duration, versions=[version])
            demo.event(f"config version {version}: v1 90 / v2 10 / v3 0; traffic starts at "
                       f"{args.rps:g} requests/s")
            try:
                await run_timeline(demo, args.rps)
            except ComponentFailed as error:
                print(f"demo: {error}", file=sys.stderr)
                status = 1
            except asyncio.CancelledError:  # Ctrl-C or SIGTERM, see _cancel_on_signals()
                # Handled here: the shutdown below must still run, and it awaits.
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                demo.event("interrupted: stopping everything")
                status = 130
            demo.event("stopping: SIGTERM to apps, proxy, upstreams, then the control plane")
            codes = await mesh.stop()
            print("\n".join(summary_lines(demo, args.rps, codes)), flush=True)
            if any(code != 0 for code in codes.values()):
                status = status or 1
    return status


def _cancel_on_signals() -> None:
    # Ctrl-C and SIGTERM cancel the running demo, whose shutdown then stops the children in
    # order. Installed explicitly: asyncio.run's own Ctrl-C handling is skipped when SIGINT
    # is ignored on entry (as in a background job of a script), and it knows nothing of SIGTERM.
    # A second signal cancels the shutdown too; main() then SIGKILLs what is left.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 after a clean run, 1 if a component failed, 130 after Ctrl-C."""
    args = parse_args(argv)
    try:
        return asyncio.run(demo_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # stopped during start-up or shutdown
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        kill_stragglers()
