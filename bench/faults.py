"""Faults under load for the lab: kill or stop helpers, restart them, and read what the apps saw.

Three parts, shared by the blast-radius and rolling-restart scenarios:

- starting and restarting sidecars and node agents with chosen ports and drain settings
  (`Lab.start_sidecars` always asks for free ports and no drain);
- apps that stay registered with a node agent the way reference/app/registration.py keeps
  them (its own `register` and `keep_registered`, one gRPC channel per app), so that after an
  agent restart each app finds its new outbound port exactly when the real app would;
- reading a paced run's samples: who failed, when, and when each app recovered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from .mesh import SERVICE, Helper, Lab, admin_json, wait_until
from .pacer import PacedResult, Sample, Target, run_paced
from . import svg

# ----- helpers with chosen ports and drain settings -------------------------------------------


@dataclass(frozen=True)
class Drain:
    """A helper's SIGTERM behaviour: serve new requests for `delay` s, cut what outlives `grace`."""

    delay: float
    grace: float

    def args(self) -> list[str]:
        return ["--drain-delay", f"{self.delay:g}", "--drain-grace", f"{self.grace:g}"]


# Stop at once: the listener closes on SIGTERM and requests in flight are cut, as a process
# without a drain would; also what the lab uses where shutdown is not what it measures.
NO_DRAIN = Drain(0.0, 0.0)


def sidecar_spec(lab: Lab, name: str, app_port: int, drain: Drain, *,
                 ports: Helper | None = None) -> tuple[str, list[str]]:
    """The command line of one sidecar; with `ports`, the same ports as that (dead) sidecar."""
    inbound, outbound, admin = (ports.inbound, ports.outbound, ports.admin) if ports else (0, 0, 0)
    return (name, ["sidecar", "--service", SERVICE, "--app-address", f"127.0.0.1:{app_port}",
                   "--inbound-host", "127.0.0.1", "--inbound-port", str(inbound),
                   "--outbound-port", str(outbound), "--admin-port", str(admin),
                   "--control-plane", f"http://127.0.0.1:{lab.control_plane['http']}", *drain.args()])


def node_agent_spec(lab: Lab, name: str, socket: str, drain: Drain,
                    cache_dir: str | None = None) -> tuple[str, list[str]]:
    """The command line of one node agent on `socket` (a restart reuses the same path).

    `cache_dir`: where it keeps configs and app registrations; a restart that keeps the folder
    (a container restart with an emptyDir) serves the apps on their old ports at once.
    """
    cache = ["--cache-dir", cache_dir] if cache_dir is not None else []
    return (name, ["nodeagent", "--socket", socket, "--admin-port", "0", "--log-level", "WARNING",
                   "--control-plane-grpc", f"127.0.0.1:{lab.control_plane['grpc']}", *cache,
                   *drain.args()])


def start_helpers(lab: Lab, specs: list[tuple[str, list[str]]]) -> list[Helper]:
    """Start sidecars and node agents side by side; return when each listens."""
    helpers = []
    for process, ports in lab.start(specs):
        if ports.get("component") == "nodeagent":
            helpers.append(Helper(process, admin=ports["admin"], socket=ports["socket"]))
        else:
            helpers.append(Helper(process, admin=ports["admin"], outbound=ports["outbound"],
                                  inbound=ports["inbound"]))
    return helpers


def wait_for_version(helpers: Sequence[Helper], version: int) -> None:
    """Wait until every sidecar serves config `version` or a later one."""
    for helper in helpers:
        wait_until(lambda h=helper: sidecar_serves(h, version),
                   f"sidecar on admin port {helper.admin} to get config {version}")


# ----- apps that keep themselves registered with a node agent ---------------------------------


class RegisteredApps:
    """N apps kept registered with a node agent by the reference app's own refresh loop.

    The loops run in a thread of their own (one event loop, one gRPC channel per app, as N app
    processes would have). App i refreshes i/N of an interval after app 0, as apps started at
    different moments would, so a fault at any moment finds their next refreshes spread evenly
    over the interval ahead.
    """

    def __init__(self, socket: str, app_ids: list[str], ports: list[int], *, refresh: float) -> None:
        # Imported here: only node-agent scenarios need grpcio in the bench process.
        from reference.app.registration import Registration

        self.socket = socket
        self.refresh = refresh
        self.registrations = [Registration(app_id, SERVICE, f"127.0.0.1:{port}")
                              for app_id, port in zip(app_ids, ports)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registered-apps", daemon=True)
        self._task: asyncio.Task | None = None
        # The refresh loop logs a warning per failed Register; the lab reads the outcome from
        # the samples instead, and the warnings would only scribble over the progress bar.
        self._quiet = logging.NullHandler()

    def port(self, index: int) -> int:
        """Where app `index` sends its outbound calls now."""
        return int(self.registrations[index].outbound_address.rsplit(":", 1)[1])

    def ports(self) -> list[int]:
        return [self.port(index) for index in range(len(self.registrations))]

    def __enter__(self) -> RegisteredApps:
        logging.getLogger("reference.app.registration").addHandler(self._quiet)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            logging.getLogger("reference.app.registration").removeHandler(self._quiet)

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _stop(self) -> None:
        # Cancel and wait, so each app's channel closes inside the loop that owns it.
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import grpc

        from reference.app.registration import keep_registered, register
        from reference.protos import nodeagent_pb2_grpc

        async def one(index: int, registration) -> None:
            async with grpc.aio.insecure_channel(f"unix://{self.socket}") as channel:
                stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
                # Long-running apps refresh at moments spread over the interval, also within
                # the first one: app i refreshes at i/N of it, then every interval after that.
                # keep_registered sleeps a whole interval first, so the first tick is done here.
                await asyncio.sleep(self.refresh * index / len(self.registrations))
                try:
                    await register(stub, registration, timeout=self.refresh)
                except grpc.aio.AioRpcError:
                    pass  # as keep_registered does: the next tick tries again
                await keep_registered(stub, registration, self.refresh)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(self.registrations)))


class LiveTargets(Sequence[Target]):
    """The paced client's targets, each looked up when a request is sent (ports can change)."""

    def __init__(self, lookups: list[Callable[[], Target]]) -> None:
        self._lookups = lookups

    def __len__(self) -> int:
        return len(self._lookups)

    def __getitem__(self, index):  # type: ignore[override]
        return self._lookups[index]()


def fixed(target: Target) -> Callable[[], Target]:
    return lambda: target


def registered(apps: RegisteredApps, index: int, host: str) -> Callable[[], Target]:
    return lambda: Target(apps.port(index), host)


def agent_serves(agent: Helper, apps: RegisteredApps, version: int) -> bool:
    """True once `agent` serves every app, with config, on the port the app calls.

    A new agent that restored its apps serves them on their old ports; one that did not gives
    each a new port when it registers again, and the app calls its old port until then.
    """
    served = {app["app_id"]: app for app in admin_json(agent.admin).get("apps", [])}
    for registration, port in zip(apps.registrations, apps.ports()):
        app = served.get(registration.app_id)
        if (app is None or app["config_version"] < version
                or app["outbound_address"] != f"127.0.0.1:{port}"):
            return False
    return True


def sidecar_serves(sidecar: Helper, version: int) -> bool:
    return (admin_json(sidecar.admin).get("version") or 0) >= version


# ----- a load window with faults in it ---------------------------------------------------------


class Window:
    """A paced run in a background thread; `at(t)` waits until t s after its first request.

    `seconds` is an upper bound: `finish_when` ends the run earlier, once the system has
    recovered and a tail has been measured, so a quiet machine spends no time on idle load and
    a busy one still gets the time its restarts take.
    """

    LEAD = 0.3  # s between scheduling the run and its first request: the client's own start-up

    def __init__(self, targets: Sequence[Target], *, rate: float, seconds: float, timeout: float) -> None:
        self.start = time.perf_counter() + self.LEAD
        self.seconds = seconds
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(run_paced, targets, rate=rate, seconds=seconds,  # type: ignore[arg-type]
                                         timeout=timeout, start_at=self.start, stop=self._stop)

    def now(self) -> float:
        """Seconds since the first request was due (the samples' clock)."""
        return time.perf_counter() - self.start

    def at(self, moment: float) -> float:
        """Sleep until `moment` on the samples' clock; return the moment reached."""
        time.sleep(max(0.0, moment - self.now()))
        return self.now()

    def finish_when(self, recovered: Callable[[], bool], *, tail: float) -> bool:
        """Poll `recovered`; once true, load `tail` s more and stop. False if the run ended first."""
        while not recovered():
            if self.now() >= self.seconds:
                return False
            time.sleep(0.05)
        self.at(self.now() + tail)
        self._stop.set()
        return True

    def result(self) -> PacedResult:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


@dataclass
class Restart:
    """When one helper went down and came back, on the samples' clock (s)."""

    stopped_at: float  # SIGKILL sent, or SIGTERM sent
    exited_at: float = math.nan
    spawned_at: float = math.nan
    listening_at: float = math.nan

    def json(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in vars(self).items()}


# ----- reading the samples ---------------------------------------------------------------------


def outage(samples: Sequence[Sample], members: range, fault_at: float, *, timeout: float) -> dict[str, Any]:
    """What the apps `members` (target indices) saw around a fault at `fault_at` s.

    An app recovered at the due time of its first successful request after its last failed
    one; the group recovered when its last app did (None if one never did within the run).
    Failures are told apart by their answer: an HTTP status, no answer within the client's
    `timeout` (a stalled helper, or a machine too busy to answer), or refused or reset (no
    process listening, or one that died mid-request).
    """
    failed = {index: 0 for index in members}
    last_failure: dict[int, float] = {}
    requests = failed_before = 0
    statuses: dict[str, int] = {}
    for sample in samples:
        if sample.target not in failed:
            continue
        requests += 1
        if not sample.ok:
            failed[sample.target] += 1
            last_failure[sample.target] = max(last_failure.get(sample.target, -math.inf), sample.due)
            # By when the failure was seen: a request due just before the fault but sent late
            # (the client is behind its schedule on a busy machine) meets the fault itself.
            failed_before += sample.due + sample.latency_ms / 1000 < fault_at
            key = failure_kind(sample, timeout)
            statuses[key] = statuses.get(key, 0) + 1
    recovered: dict[int, float | None] = {}
    for index, last in last_failure.items():
        after = [s.due for s in samples if s.target == index and s.ok and s.due > last]
        recovered[index] = min(after) - fault_at if after else None
    times = list(recovered.values())
    return {
        "apps": len(members),
        "apps_affected": len(last_failure),
        "share_affected": round(len(last_failure) / len(members), 3),
        "requests": requests,
        "failed": sum(failed.values()),
        "failed_before_fault": failed_before,
        "failure_answers": dict(sorted(statuses.items())),
        # None: some app had not recovered when the run ended.
        "recovery_seconds": (round(max(times), 3) if times else 0.0) if None not in times else None,
        "recovery_by_app_seconds": [None if recovered.get(i) is None else round(recovered[i], 3)
                                    for i in members],
    }


def failure_kind(sample: Sample, timeout: float) -> str:
    if sample.status:
        return str(sample.status)
    # Latency counts from the due time, the timeout from the send: allow for a late send.
    return "timed out" if sample.latency_ms >= timeout * 1000 * 0.99 else "refused or reset"


def timeline(samples: Sequence[Sample], members: range, *, origin: float, start: float,
             end: float, bin_seconds: float) -> list[int]:
    """Failed requests per bin, by due time relative to `origin`, from `start` to `end` s."""
    bins = [0] * max(1, round((end - start) / bin_seconds))
    for sample in samples:
        if sample.target in members and not sample.ok:
            k = math.floor((sample.due - origin - start) / bin_seconds)
            if 0 <= k < len(bins):
                bins[k] += 1
    return bins


def timelines(samples: Sequence[Sample], groups: dict[str, range], origins: dict[str, float], *,
              before: float, after: float, bin_seconds: float) -> dict[str, Any]:
    """Each group's failed requests per bin, from `before` s ahead of its origin to `after` s past it."""
    return {
        "bin_seconds": bin_seconds,
        "from_seconds": -before,
        **{name: timeline(samples, members, origin=origins[name], start=-before, end=after,
                          bin_seconds=bin_seconds) for name, members in groups.items()},
    }


def timeline_chart(line: dict[str, Any], labels: dict[str, str], *, title: str, x_label: str,
                   marker: str) -> str:
    """A line per group of `timelines` over time, with a dashed line at 0 named `marker`.

    svg.line_chart puts a tick and a dot at every x and starts at 0; a timeline has hundreds of
    bins and starts before the fault, so it gets round ticks and a plain line instead.
    """
    step, first = line["bin_seconds"], line["from_seconds"]
    per = f"per {step * 1000:.0f} ms"
    names = list(labels)
    count = len(line[names[0]])
    last = first + count * step
    ticks_y = svg.nice_ticks(max((v for name in names for v in line[name]), default=0))
    out = svg._frame(f"{title} ({per}, lower is better)", x_label, f"Failed requests ({per})", ticks_y,
                     [labels[name] for name in names])
    plot_w, plot_h = svg.WIDTH - svg.LEFT - svg.RIGHT, svg.HEIGHT - svg.TOP - svg.BOTTOM
    bottom = svg.TOP + plot_h

    def px(t: float) -> float:
        return svg.LEFT + plot_w * (t - first) / (last - first)

    def py(v: float) -> float:
        return bottom - plot_h * v / ticks_y[-1]

    out.append('<g class="x-axis">')
    x_step = svg.nice_ticks(last - first, count=8)[1]
    for k in range(math.ceil(first / x_step), math.floor(last / x_step) + 1):
        t = round(k * x_step, 9)
        out.append(f'<line x1="{px(t):.1f}" y1="{bottom}" x2="{px(t):.1f}" y2="{bottom + 5}" stroke="#444"/>')
        out.append(svg._text(px(t), bottom + 18, svg.number(t), size=11, cls="tick", extra=' fill="#333"'))
    out.append("</g>")
    out.append(f'<line x1="{px(0):.1f}" y1="{svg.TOP}" x2="{px(0):.1f}" y2="{bottom}" stroke="#666" '
               f'stroke-dasharray="4 3"/>')
    out.append(svg._text(px(0) + 4, svg.TOP + 12, marker, anchor="start", size=11, extra=' fill="#444"'))
    out.append('<g class="lines">')
    for i, name in enumerate(names):
        # A step line: each bin's count holds from its start to its end.
        points = " ".join(f"{px(first + k * step):.1f},{py(v):.1f} {px(first + (k + 1) * step):.1f},{py(v):.1f}"
                          for k, v in enumerate(line[name]))
        out.append(f'<polyline points="{points}" fill="none" stroke="{svg.PALETTE[i % len(svg.PALETTE)]}" '
                   f'stroke-width="2"><title>{escape(labels[name])}</title></polyline>')
    out += ["</g>", "</svg>"]
    return "\n".join(out) + "\n"


def seconds_cell(value: float | None) -> str:
    """A recovery time for a table cell; None means the run ended first."""
    return "not within the run" if value is None else f"{value:.2f}"


def answers(counts: dict[str, int]) -> str:
    """'503 × 12, no answer × 3' for a table cell; '–' for none."""
    return ", ".join(f"{key} × {value}" for key, value in counts.items()) or "–"
