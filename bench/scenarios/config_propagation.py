"""Config propagation: from one control-plane write until all N consumers apply it.

Three ways for N apps to get their config, each on a service of its own so that a write wakes
only the consumers being measured:

- N sidecars long-polling the control plane's HTTP API (push: the held request is answered as
  soon as the write is stored);
- N sidecars polling it every `poll_interval_s` without long-polling (`--poll-interval`);
- one node agent with N registered apps, fed by a gRPC Watch stream (push), which applies each
  version to all its apps of the service in one go.

When a helper starts serving a version it logs "config SERVICE vN applied" (ConfigSync in the
sidecar, the watch in the node agent), with a millisecond timestamp. The bench reads those
lines from the helpers' log files instead of polling their admin listeners: polling N helpers
every millisecond would take more CPU than the propagation itself and slow what it measures.
After the last write of a row, each helper's admin `/config` is checked to confirm. Times run
from just before the PUT is sent. Writes to the polling sidecars are spaced by a seeded random
pause within one polling interval, so each lands at a random phase of their cycles. Helpers are
started once, as N grows, and reused.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from ..mesh import TOKEN, Helper, Lab, admin_json, proxy_config, register_apps
from ..procs import free_port
from ..progress import Progress
from ..scenario import Scenario, Table, register
from ..svg import Series, line_chart

MODES = ("longpoll", "poll", "nodeagent")
SERVICES = {"longpoll": "propagation-longpoll", "poll": "propagation-poll", "nodeagent": "propagation-agent"}
PUSH_GAP_S = 0.03  # between push writes (plus up to as much again, at random): time to poll again
WRITE_TIMEOUT_S = 5.0  # on top of the polling interval: later than this counts as missed
READ_PAUSE_S = 0.005  # between reads of the log files while waiting for a write to land
# The helpers log at INFO so that the "applied" lines are written.
LOG_INFO = ("--log-level", "INFO")


def writes_for(mode: str, settings: dict[str, Any]) -> int:
    return settings["writes"]["poll" if mode == "poll" else "push"]


def label(mode: str, interval: float) -> str:
    return {"longpoll": "sidecars, HTTP long-poll (push)",
            "poll": f"sidecars, poll every {interval:g} s",
            "nodeagent": "node agent, gRPC watch (push)"}[mode]


@register
class ConfigPropagation(Scenario):
    name = "config_propagation"
    title = "Config propagation: from one write until N consumers apply it"

    def settings(self, quick: bool) -> dict[str, Any]:
        return {
            "counts": [2] if quick else [1, 10, 25],
            # Writes per row: a push write costs tens of milliseconds, a polling one about
            # 1.5 intervals (a random pause, then the slowest sidecar's next poll).
            "writes": {"push": 3, "poll": 3} if quick else {"push": 12, "poll": 8},
            # Shorter in a quick run only to fit its time budget.
            "poll_interval_s": 0.5 if quick else 1.0,
            "seed": 1,
        }

    def steps(self, settings: dict[str, Any]) -> int:
        return 1 + len(settings["counts"]) * (1 + len(MODES))

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        rng = random.Random(settings["seed"])
        interval = settings["poll_interval_s"]
        measured: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        with Lab() as lab:
            with progress.step("starting control plane and node agent"):
                # No request crosses the data path here: the config only has to be valid.
                unused_port = free_port()
                config = proxy_config(unused_port)
                lab.start_control_plane(unused_port)
                versions = {mode: lab.put_config(config, service=SERVICES[mode]) for mode in MODES}
                agent = lab.start_node_agent(log_level="INFO")
            # Closed with the lab: the log files it follows live in the lab's folder.
            fleet = lab.enter(closing(Fleet(lab, agent, versions, interval)))
            for index, n in enumerate(settings["counts"]):
                with progress.step(f"N={n}: starting {2 * (n - len(fleet.apps))} sidecars, "
                                   f"registering {n - len(fleet.apps)} apps"):
                    fleet.grow(n)
                # Alternate the order of the modes (Rule 3), so drift favours none of them.
                for mode in MODES if index % 2 == 0 else MODES[::-1]:
                    with progress.step(f"N={n}: {writes_for(mode, settings)} writes to {label(mode, interval)}"):
                        consumers = fleet.consumers(mode)
                        writes = measure(lab.control_plane["http"], SERVICES[mode], versions[mode],
                                         consumers, config, mode, settings, rng)
                        versions[mode] += len(writes)
                        # The log lines are the measurement; the admin listeners confirm them.
                        measured[mode].append(summarise(n, writes, consumers.serving(versions[mode])))
        return {"modes": measured}

    def table(self, result: dict[str, Any]) -> Table:
        settings = result["settings"]
        interval = settings["poll_interval_s"]
        rows = []
        for mode in MODES:
            for run in result["modes"][mode]:
                per_app, every = run["per_app_ms"], run["all_applied_ms"]
                rows.append([
                    label(mode, interval), f"{interval:g}" if mode == "poll" else "–", str(run["apps"]),
                    str(run["writes"]), f"{per_app['p50']:.1f}", f"{per_app['p99']:.1f}",
                    f"{per_app['max']:.1f}", f"{every['p50']:.1f}", f"{every['max']:.1f}",
                    f"{run['put_ms_p50']:.1f}", str(run["missed"] + run["apps"] - run["serving_last_version"]),
                ])
        return Table(
            headers=["Consumers", "Poll interval (s)", "Apps (N)", "Writes", "Per app p50 (ms)",
                     "Per app p99 (ms)", "Per app max (ms)", "All N applied p50 (ms)",
                     "All N applied max (ms)", "PUT round trip p50 (ms)", "Missed"],
            rows=rows, align="lrrrrrrrrrr",
            notes=[
                f"Config writes (PUTs) go one at a time. Before each write to the polling sidecars the "
                f"bench waits a seeded random pause within one {interval:g} s interval, so writes land "
                f"at random phases of their polling; before a push write, {PUSH_GAP_S * 1000:.0f}–"
                f"{PUSH_GAP_S * 2000:.0f} ms. Times run from just before "
                f"the PUT is sent (so they include the control plane's commit, whose round trip is "
                f"shown) until the helper logs that it serves the new version; the log's timestamps "
                f"resolve 1 ms. Per app: every (write, app) pair, nearest-rank percentiles; all N "
                f"applied: the slowest app of each write. The node agent applies a version to all "
                f"its apps at once, so both read the same there.",
                f"Missed counts (write, app) pairs without an applied line within {WRITE_TIMEOUT_S:g} s "
                f"plus the interval, and apps whose admin `/config` did not show the row's last write "
                f"once it was logged.",
            ],
        )

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        runs = result["modes"]
        counts = [run["apps"] for run in runs["longpoll"]]
        interval = result["settings"]["poll_interval_s"]

        def series(mode: str, name: str, stat: str) -> Series:
            return Series(name, [run["per_app_ms"][stat] for run in runs[mode]])

        return {
            "config_propagation_push": line_chart(
                title="Push: from a write until applied (lower is better)",
                x_label="Apps on the machine (N)", y_label="Write to applied (ms)", x=counts,
                series=[series("longpoll", "long-poll p50", "p50"), series("longpoll", "long-poll max", "max"),
                        series("nodeagent", "node agent p50", "p50"), series("nodeagent", "node agent max", "max")]),
            "config_propagation_poll": line_chart(
                title=f"Polling every {interval:g} s against push (lower is better)",
                x_label="Apps on the machine (N)", y_label="Write to applied (ms)", x=counts,
                series=[series("poll", f"poll {interval:g} s p50", "p50"),
                        series("poll", f"poll {interval:g} s max", "max"),
                        series("longpoll", "long-poll max", "max"), series("nodeagent", "node agent max", "max")]),
        }


class Fleet:
    """The helpers of all three modes, grown to N apps each and kept for the larger N."""

    def __init__(self, lab: Lab, agent: Helper, versions: dict[str, int], interval: float) -> None:
        self.lab, self.agent, self.versions, self.interval = lab, agent, versions, interval
        self.sidecars: dict[str, list[Helper]] = {"longpoll": [], "poll": []}
        self.logs: dict[str, list[AppliedLog]] = {"longpoll": [], "poll": []}
        self.agent_log = AppliedLog(lab.workdir / "nodeagent.log", SERVICES["nodeagent"])
        self.apps: list[str] = []

    def grow(self, n: int) -> None:
        have = len(self.apps)
        for mode, extra in (("longpoll", ()), ("poll", ("--poll-interval", f"{self.interval:g}"))):
            self.sidecars[mode] += self.lab.start_sidecars(
                have + 1, n - have, free_port(), self.versions[mode], service=SERVICES[mode],
                name=mode, extra_args=(*extra, *LOG_INFO))
            self.logs[mode] += [AppliedLog(self.lab.workdir / f"{mode}-{k}.log", SERVICES[mode])
                                for k in range(have + 1, n + 1)]
        ids = [f"propagation-app-{k}" for k in range(have + 1, n + 1)]
        register_apps(self.agent, ids, self.versions["nodeagent"], service=SERVICES["nodeagent"])
        self.apps += ids

    def consumers(self, mode: str) -> Consumers:
        if mode == "nodeagent":
            return Consumers([self.agent_log], [self.agent.admin], list(self.apps))
        return Consumers(self.logs[mode], [h.admin for h in self.sidecars[mode]], [])

    def close(self) -> None:
        for log in [self.agent_log, *self.logs["longpoll"], *self.logs["poll"]]:
            log.close()
        # The measurement is over and nothing is in flight: SIGKILL, because a graceful stop of
        # 50 Python processes on 2 cores takes seconds of the bench's budget. (The lab reaps them.)
        for helper in self.sidecars["longpoll"] + self.sidecars["poll"]:
            if helper.process.poll() is None:
                helper.process.kill()


# ----- watching the consumers -------------------------------------------------------------------

# What ConfigSync (sidecar) and the node agent's watch log once a version is in use, e.g.
# "2026-11-25 21:48:41,123 INFO reference.config_sync: config propagation-poll v7 applied".
APPLIED = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO [\w.]+: config (\S+) v(\d+) applied$")


class AppliedLog:
    """Follows one helper's log file: when it applied each version of `service` (Unix time)."""

    def __init__(self, path: Path, service: str) -> None:
        self._file = path.open("rb")
        self._service = service.encode()
        self._partial = b""
        self.applied: dict[int, float] = {}

    def read(self) -> None:
        lines = (self._partial + self._file.read()).split(b"\n")
        self._partial = lines.pop()  # a line still being written
        for line in lines:
            match = APPLIED.match(line)
            if match and match[3] == self._service:
                # logging writes local time, truncated to the millisecond: the apply lies within
                # that millisecond. A naive datetime's timestamp() reads it as local time too.
                stamp = datetime.strptime(match[1].decode(), "%Y-%m-%d %H:%M:%S").timestamp()
                self.applied[int(match[4])] = stamp + int(match[2]) / 1000 + 0.0005

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Consumers:
    """The helpers of one mode: their logs, admin ports, and how many apps each one serves."""

    logs: list[AppliedLog]
    admins: list[int]
    apps: list[str]  # the node agent's app ids; empty for sidecars (one app each)

    def serving(self, target: int) -> int:
        """How many apps the helpers' admin /config shows serving `target` or newer."""
        if not self.apps:
            return sum((admin_json(port).get("version") or 0) >= target for port in self.admins)
        wanted = set(self.apps)
        return sum(app["config_version"] >= target for port in self.admins
                   for app in admin_json(port).get("apps", []) if app["app_id"] in wanted)


@dataclass
class Write:
    """One PUT, and when each consumer applied it (None: it did not within the timeout)."""

    sent: float
    returned: float
    applied: list[float | None]


def measure(port: int, service: str, version: int, consumers: Consumers, config: dict[str, Any],
            mode: str, settings: dict[str, Any], rng: random.Random) -> list[Write]:
    """Write the config `writes` times, one at a time, and read when each consumer applied it."""
    interval = settings["poll_interval_s"]
    body = json.dumps(config).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    control = HTTPConnection("127.0.0.1", port, timeout=5)  # keep-alive: no connect in the timing
    writes = []
    try:
        for number in range(writes_for(mode, settings)):
            # A random moment within one polling interval (seeded), so polling's phase is
            # sampled fairly; the push modes get the same kind of pause, shorter.
            time.sleep(rng.uniform(0, interval) if mode == "poll" else PUSH_GAP_S * (1 + rng.random()))
            target = version + number + 1
            sent = time.time()
            control.request("PUT", f"/v1/services/{service}/config", body, headers)
            answer = json.loads(control.getresponse().read())
            returned = time.time()
            if answer.get("version") != target:
                raise RuntimeError(f"expected version {target} from the control plane, got {answer}")
            applied = wait_for_logs(consumers.logs, target, time.monotonic() + interval + WRITE_TIMEOUT_S)
            if consumers.apps:  # the node agent logs once for all its apps of the service
                applied = applied * len(consumers.apps)
            writes.append(Write(sent, returned, applied))
    finally:
        control.close()
    return writes


def wait_for_logs(logs: list[AppliedLog], target: int, deadline: float) -> list[float | None]:
    """Read the logs until each shows `target` applied, or the deadline passes."""
    # The timestamps come from the log lines, so this loop's pace does not limit resolution;
    # it only decides how soon the next write may start.
    while True:
        for log in logs:
            log.read()
        if all(target in log.applied for log in logs) or time.monotonic() > deadline:
            return [log.applied.get(target) for log in logs]
        time.sleep(READ_PAUSE_S)


# ----- summarising ------------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank: always a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats(values: list[float]) -> dict[str, float]:
    """Min, p50, p99 and max in ms; min shows no apply was logged before its write was sent."""
    if not values:
        return {"min": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {"min": round(min(values), 2), "p50": round(nearest_rank(values, 0.5), 2),
            "p99": round(nearest_rank(values, 0.99), 2), "max": round(max(values), 2)}


def summarise(n: int, writes: list[Write], serving: int) -> dict[str, Any]:
    """Per (write, app) delays, the slowest app of each write, the PUT times, what was missed."""
    delays: list[float] = []
    slowest: list[float] = []
    missed = 0
    for write in writes:
        applied = [(t - write.sent) * 1000 for t in write.applied if t is not None]
        missed += len(write.applied) - len(applied)
        delays += applied
        if len(applied) == len(write.applied):  # all N applied: only when none was missed
            slowest.append(max(applied))
    return {
        "apps": n,
        "writes": len(writes),
        "samples": len(delays),
        "missed": missed,
        "serving_last_version": serving,  # apps whose admin /config shows the last write
        "per_app_ms": stats(delays),
        "all_applied_ms": stats(slowest),
        "put_ms_p50": round(nearest_rank([(w.returned - w.sent) * 1000 for w in writes], 0.5), 2) if writes else 0.0,
    }
