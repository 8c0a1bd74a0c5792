"""Rolling restart: replace instances one at a time under load, with and without a drain.

Each instance is a sidecar in front of the app (the app itself is one shared nginx that stays
up, so only the instance's shutdown is measured). Callers reach the instances through a real
load balancer: the callers' own sidecar, whose outbound cluster lists the instances' inbound
listeners. Its endpoints change the way a mesh changes them: the lab PUTs a new config to the
control plane, which pushes it to the sidecar (long poll).

A rolling update replaces instance 1, then 2, and so on (maxSurge 0, maxUnavailable 1): the
old instance gets SIGTERM and its replacement starts at the same moment; the replacement
joins the cluster once it listens and has its config. The old endpoint leaves the cluster only
`endpoint_lag_seconds` after the SIGTERM: in Kubernetes the endpoint controller, the control
plane and every proxy take a while to hear that a pod is terminating, and meanwhile requests
keep coming. The next instance is replaced once the old one has exited and its replacement
serves (so at most one instance is terminating at a time). Two rolls run side by side on two
sets of instances, each under its own Host name, so the same machine noise hits both:

- **no drain**: SIGTERM stops the instance at once (`--drain-delay 0 --drain-grace 0`): the
  requests the balancer still sends it during the lag are refused.
- **drain**: the instance keeps serving for `drain_delay_seconds` (longer than the lag) after
  SIGTERM, as a preStop hook or Istio's terminationDrainDuration would keep it, then stops
  accepting and lets requests in flight finish.

A third load runs alongside: the apps of one node, calling out through a node agent that is
upgraded (SIGTERM with the same drain, then its replacement starts on the same socket). The
new agent knows none of the apps, so each app's calls fail until the app registers again
(reference/app/registration.py's refresh loop, as in the blast-radius scenario): a drain
cannot help apps whose helper is the thing going away.

A control target calls nginx directly, at a low rate, through nothing that restarts: on a busy
machine every load can stall at once (the client itself included), and a failure of the
control says that a failure at that moment was the machine's, not the restart's. The load
stops `tail_seconds` after both rolls are done and every app on the node has its new port.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..faults import (
    NO_DRAIN,
    Drain,
    LiveTargets,
    RegisteredApps,
    Restart,
    Window,
    agent_serves,
    answers,
    fixed,
    node_agent_spec,
    outage,
    registered,
    seconds_cell,
    sidecar_spec,
    start_helpers,
    timeline_chart,
    timelines,
    wait_for_version,
)
from ..mesh import UPSTREAM_HOST, Helper, Lab, admin_json, proxy_config, register_apps, wait_until
from ..nginx import Nginx
from ..pacer import Target
from ..progress import Progress
from ..scenario import Scenario, Table, register

ROLLS = ("nodrain", "drain")
VARIANTS = (*ROLLS, "nodeagent", "control")
BREAKER_OFF = 1_000_000  # consecutive failures before the callers' sidecar's breaker opens
LABELS = {"nodrain": "sidecars, no drain", "drain": "sidecars, drain",
          "nodeagent": "node agent, drain", "control": "control: nginx directly"}


@register
class RollingRestart(Scenario):
    name = "rolling_restart"
    title = "Rolling restart: instances replaced under load, with and without a drain"

    def settings(self, quick: bool) -> dict[str, Any]:
        return {
            "instances": 2 if quick else 4,
            "node_apps": 4 if quick else 10,
            "rate_rps": 100 if quick else 150,  # per variant
            "endpoint_lag_seconds": 0.3 if quick else 1.0,
            "drain_delay_seconds": 1.0 if quick else 2.0,
            "drain_grace_seconds": 2.0 if quick else 5.0,
            "app_refresh_seconds": 1.0 if quick else 10.0,
            "before_seconds": 0.3 if quick else 1.0,
            # The load ends `tail_seconds` after every roll is done and every app on the node agent
            # serves again, or `max_after_seconds` after the first SIGTERM, whichever is first.
            "max_after_seconds": 8 if quick else 25,
            "tail_seconds": 0.3 if quick else 1.0,
            "timeout_seconds": 2.0,
            "bin_seconds": 0.1,
            "body_bytes": 1024,
        }

    def steps(self, settings: dict[str, Any]) -> int:
        return 3

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        n, m = settings["instances"], settings["node_apps"]
        drains = {"nodrain": NO_DRAIN, "drain": Drain(settings["drain_delay_seconds"], settings["drain_grace_seconds"])}
        with Lab() as lab:
            with progress.step(f"starting nginx, control plane, 1 + 2 × {n} sidecars, node agent"):
                upstream = lab.enter(Nginx.upstream(body_bytes=settings["body_bytes"]))
                lab.start_control_plane(upstream.port)
                socket = str(lab.workdir / "agent.sock")
                specs = [sidecar_spec(lab, "callers-sidecar", upstream.port, NO_DRAIN)]
                specs += [sidecar_spec(lab, f"{roll}-{k}", upstream.port, drains[roll])
                          for roll in ROLLS for k in range(1, n + 1)]
                specs.append(node_agent_spec(lab, "nodeagent", socket, drains["drain"]))
                client, *instances, agent = start_helpers(lab, specs)
                balancer = Balancer(lab, client, upstream.port,
                                    {roll: instances[i * n:(i + 1) * n] for i, roll in enumerate(ROLLS)})
                version = balancer.publish()
                wait_for_version([client, *instances], version)
            with progress.step(f"registering {m} apps with the node agent"):
                ids = [f"bench-app-{k}" for k in range(1, m + 1)]
                ports = register_apps(agent, ids, version)
            with RegisteredApps(socket, ids, ports, refresh=settings["app_refresh_seconds"]) as apps:
                # Each variant gets the same share of the load, m targets each, interleaved so that
                # every 100 ms bin sees each variant alike: target 3i calls through the no-drain
                # cluster, 3i + 1 through the drain cluster, 3i + 2 is node app i. The control
                # (the last target, nginx directly) is restarted by nobody: if it fails, the
                # machine stalled, and the variants' failures at that moment are not theirs.
                targets = LiveTargets([lookup for i in range(m) for lookup in (
                    fixed(Target(client.outbound, "nodrain")), fixed(Target(client.outbound, "drain")),
                    registered(apps, i, UPSTREAM_HOST))] + [fixed(Target(upstream.port, UPSTREAM_HOST))])
                with progress.step(f"load; roll {n} instances twice and upgrade the node agent"):
                    window = Window(targets, rate=settings["rate_rps"] * len(targets) / m,
                                    seconds=settings["before_seconds"] + settings["max_after_seconds"],
                                    timeout=settings["timeout_seconds"])
                    with ThreadPoolExecutor(max_workers=3) as pool:
                        rolls = {roll: pool.submit(balancer.roll, roll, window, settings, drains[roll])
                                 for roll in ROLLS}
                        upgrade = pool.submit(upgrade_agent, lab, window, settings, agent, socket, drains["drain"])
                        events = {roll: future.result() for roll, future in rolls.items()}
                        agent_restart, agent = upgrade.result()
                    window.finish_when(lambda: agent_serves(agent, apps, version), tail=settings["tail_seconds"])
                    load = window.result()
        start = settings["before_seconds"]
        groups = {"nodrain": range(0, 3 * m, 3), "drain": range(1, 3 * m, 3), "nodeagent": range(2, 3 * m, 3),
                  "control": range(3 * m, 3 * m + 1)}
        variants: dict[str, Any] = {}
        for roll in ROLLS:
            seen = outage(load.samples, groups[roll], start, timeout=settings["timeout_seconds"])
            variants[roll] = {
                "restarts": n,
                "requests": seen["requests"],
                "failed": seen["failed"],
                "failed_per_restart": round(seen["failed"] / n, 1),
                "failed_before_fault": seen["failed_before_fault"],
                "failure_answers": seen["failure_answers"],
                "roll_seconds": round(events[roll][-1].done_at - start, 3),
                "steps": [step.json() for step in events[roll]],
            }
        seen = outage(load.samples, groups["nodeagent"], agent_restart.stopped_at, timeout=settings["timeout_seconds"])
        variants["nodeagent"] = {
            "restarts": 1,
            **{key: seen[key] for key in ("requests", "failed")},
            "failed_per_restart": float(seen["failed"]),
            **{key: seen[key] for key in ("failed_before_fault", "failure_answers", "apps", "apps_affected",
                                          "share_affected", "recovery_seconds", "recovery_by_app_seconds")},
            "restart": agent_restart.json(),
        }
        seen = outage(load.samples, groups["control"], start, timeout=settings["timeout_seconds"])
        variants["control"] = {"restarts": 0, "failed_per_restart": 0.0,
                               **{key: seen[key] for key in ("requests", "failed", "failed_before_fault",
                                                             "failure_answers")}}
        return {
            "variants": variants,
            "timeline": timelines(load.samples, groups, dict.fromkeys(groups, start), before=start,
                                  after=load.seconds - start, bin_seconds=settings["bin_seconds"]),
            "scheduled": load.scheduled,
            "load_seconds": round(load.seconds, 3),
        }

    def table(self, result: dict[str, Any]) -> Table:
        rows = []
        for variant in VARIANTS:
            run = result["variants"][variant]
            share = 100 * run["failed"] / run["requests"] if run["requests"] else 0.0
            affected = f"{run['apps_affected']} of {run['apps']}" if variant == "nodeagent" else "–"
            rows.append([
                LABELS[variant], str(run["restarts"]), f"{run['requests']:,}", f"{run['failed']:,}",
                f"{share:.2f}", f"{run['failed_per_restart']:,.1f}" if run["restarts"] else "–", answers(run["failure_answers"]),
                affected, seconds_cell(run["recovery_seconds"]) if variant == "nodeagent" else "–",
            ])
        s = result["settings"]
        return Table(
            headers=["Variant", "Helpers restarted", "Requests", "Failed requests", "Failed (%)",
                     "Failed per restart", "Failed as", "Node apps affected",
                     "SIGTERM to every app recovered (s)"],
            rows=rows, align="lrrrrrlrr",
            notes=[f"Open-loop paced at {s['rate_rps']} requests/s per variant, all side by side, "
                   f"{s['timeout_seconds']:g} s timeout; the control calls nginx directly at 1/{s['node_apps']} "
                   f"of that rate and is restarted by nobody, so its failures mean the machine stalled. Each roll replaces {s['instances']} instances one at "
                   f"a time behind the callers' sidecar; an old endpoint leaves its cluster "
                   f"{s['endpoint_lag_seconds']:g} s after its SIGTERM. Drain: {s['drain_delay_seconds']:g} s of "
                   f"serving after SIGTERM; no drain: stop at once. The node agent serves {s['node_apps']} apps "
                   f"that register again every {s['app_refresh_seconds']:g} s, as the reference app does."],
        )

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        return {"rolling_restart_timeline": timeline_chart(
            result["timeline"], LABELS, title="Failed requests during the restarts",
            x_label="Time since the first SIGTERM (s)", marker="first SIGTERM")}


@dataclass
class Step:
    """One instance replaced, on the samples' clock (s)."""

    sigterm_at: float
    removed_at: float = 0.0  # the config without the old endpoint reached the callers' sidecar
    added_at: float = 0.0  # the config with the replacement reached it
    old_exited_at: float = 0.0
    done_at: float = 0.0

    def json(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in vars(self).items()}


@dataclass
class Balancer:
    """The callers' sidecar's clusters, one per roll; every change goes through the control plane."""

    lab: Lab
    client: Helper
    upstream_port: int
    clusters: dict[str, list[Helper]]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self) -> int:
        """PUT the current endpoints; return the new config version."""
        config = proxy_config(self.upstream_port)
        # The breaker is one per cluster, not per endpoint: a short run of refused requests to
        # the one stopped instance would open it for all of them. This scenario measures the
        # drain, so the breaker stays out of it.
        config["breaker"] = {"failure_threshold": BREAKER_OFF}
        for roll, helpers in self.clusters.items():
            config["clusters"][roll] = {"v1": [f"127.0.0.1:{h.inbound}" for h in helpers]}
        return self.lab.put_config(config)

    def change(self, roll: str, *, remove: Helper | None = None, add: Helper | None = None) -> None:
        """Change one cluster and wait until the callers' sidecar serves the change."""
        with self.lock:
            if remove is not None:
                self.clusters[roll].remove(remove)
            if add is not None:
                self.clusters[roll].append(add)
            version = self.publish()
        wait_until(lambda: (admin_json(self.client.admin).get("version") or 0) >= version,
                   f"the callers' sidecar to get config {version}")

    def roll(self, roll: str, window: Window, settings: dict[str, Any], drain: Drain) -> list[Step]:
        """Replace each instance of `roll` in turn, as a Deployment's rolling update would."""
        window.at(settings["before_seconds"])
        steps = []
        # Two workers: one waits for the old instance to exit, one starts its replacement.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for k, old in enumerate(list(self.clusters[roll]), start=1):
                step = Step(sigterm_at=window.now())
                old.process.terminate()
                exited = pool.submit(exit_time, old, window)
                # The replacement starts with the termination (maxSurge 0, maxUnavailable 1).
                new = pool.submit(self._replacement, f"{roll}-{k}-new", drain)
                window.at(step.sigterm_at + settings["endpoint_lag_seconds"])
                self.change(roll, remove=old)
                step.removed_at = window.now()
                self.change(roll, add=new.result())
                step.added_at = window.now()
                step.old_exited_at = exited.result()
                step.done_at = window.now()
                steps.append(step)
        return steps

    def _replacement(self, name: str, drain: Drain) -> Helper:
        [helper] = start_helpers(self.lab, [sidecar_spec(self.lab, name, self.upstream_port, drain)])
        wait_until(lambda: (admin_json(helper.admin).get("version") or 0) > 0, f"{name} to get a config")
        return helper


def exit_time(helper: Helper, window: Window) -> float:
    """Wait for `helper` to exit; the moment it did, on the samples' clock."""
    helper.process.wait(timeout=30)
    return window.now()


def upgrade_agent(lab: Lab, window: Window, settings: dict[str, Any], agent: Helper, socket: str,
                  drain: Drain) -> tuple[Restart, Helper]:
    """SIGTERM the node agent, wait for its drain and exit, start the new one on the same socket."""
    window.at(settings["before_seconds"])
    restart = Restart(stopped_at=window.now())
    agent.process.terminate()
    agent.process.wait(timeout=30)
    # A DaemonSet's rolling update (maxSurge 0) starts the new pod once the old one is gone:
    # both would claim the same socket.
    restart.exited_at = restart.spawned_at = window.now()
    [new] = start_helpers(lab, [node_agent_spec(lab, "nodeagent-new", socket, drain)])
    restart.listening_at = window.now()
    return restart, new
