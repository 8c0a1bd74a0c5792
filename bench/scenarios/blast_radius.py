"""Blast radius: under load, kill one app's sidecar, or kill the node agent that serves every app.

N apps call the same nginx upstream through their helper, played by one open-loop paced
client (bench/pacer.py) at a fixed rate per pattern, spread evenly over the apps. Both patterns
run side by side in one load window, so the same machine noise hits both:

- **sidecars**: each app has its own sidecar. Sidecar 1 gets SIGKILL and a new sidecar process
  starts on the same ports, as the kubelet restarts a crashed container inside its pod (the
  pod's network, and so its ports, stay). App 1 calls 127.0.0.1 at the same port as before,
  so it reaches the new sidecar as soon as that one listens and has its config.
- **node agent**: one agent serves all N apps. It gets SIGKILL at the same moment and a new
  agent process starts on the same Unix socket, as the kubelet restarts the DaemonSet's
  container. The crash leaves the agent's cache folder in place (a container restart keeps
  an emptyDir), so the new agent finds its apps' registrations there and listens on each
  app's old port before any app registers again. The apps here run
  reference/app/registration.py's own refresh loop (`keep_registered`: Register every
  `app_refresh_seconds`, waiting for an agent that is not up yet), with their refreshes spread
  evenly over the interval as apps started at different moments would have.

The lab restarts a killed helper after `restart_delay_seconds` (0: at once; the kubelet's
restart back-off is not modelled). The load stops `tail_seconds` after both patterns serve
again. The samples then tell which apps failed, how many requests failed, and when each app's
requests succeeded again; the untouched sidecars' apps are the control.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..faults import (
    NO_DRAIN,
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
    sidecar_serves,
    sidecar_spec,
    start_helpers,
    timeline_chart,
    timelines,
    wait_for_version,
)
from ..mesh import UPSTREAM_HOST, Helper, Lab, register_apps
from ..nginx import Nginx
from ..pacer import Target
from ..progress import Progress
from ..scenario import Scenario, Table, register

PATTERNS = ("sidecars", "nodeagent")
LABELS = {"sidecars": "one sidecar killed", "nodeagent": "node agent killed"}


@register
class BlastRadius(Scenario):
    name = "blast_radius"
    title = "Blast radius: one sidecar killed against the node agent killed"

    def settings(self, quick: bool) -> dict[str, Any]:
        # The reference app refreshes its registration every 10 s (REFRESH_INTERVAL); the quick
        # run shortens it so that recovery fits in its window. The load ends `tail_seconds` after
        # both patterns serve again, or `max_after_seconds` after the kill, whichever is first.
        return {
            "apps": 4 if quick else 10,
            "rate_rps": 100 if quick else 200,  # per pattern, spread evenly over its apps
            "before_seconds": 0.3 if quick else 2,
            "max_after_seconds": 6 if quick else 20,
            "tail_seconds": 0.3 if quick else 1.0,
            "restart_delay_seconds": 0.0,
            "app_refresh_seconds": 1.0 if quick else 10.0,
            "timeout_seconds": 2.0,
            "bin_seconds": 0.1,
            "body_bytes": 1024,
        }

    def steps(self, settings: dict[str, Any]) -> int:
        return 3

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        n = settings["apps"]
        with Lab() as lab:
            with progress.step(f"starting nginx, control plane, {n} sidecars, node agent"):
                upstream = lab.enter(Nginx.upstream(body_bytes=settings["body_bytes"]))
                version = lab.start_control_plane(upstream.port)
                socket = str(lab.workdir / "agent.sock")
                *sidecars, agent = start_helpers(
                    lab, [sidecar_spec(lab, f"sidecar-{k}", upstream.port, NO_DRAIN) for k in range(1, n + 1)]
                    + [node_agent_spec(lab, "nodeagent", socket, NO_DRAIN, agent_cache(lab))])
                wait_for_version(sidecars, version)
            with progress.step(f"registering {n} apps with the node agent"):
                ids = [f"bench-app-{k}" for k in range(1, n + 1)]
                ports = register_apps(agent, ids, version)
            with RegisteredApps(socket, ids, ports, refresh=settings["app_refresh_seconds"]) as apps:
                # Targets 0..n-1: the apps with sidecars; n..2n-1: the apps on the node agent.
                targets = LiveTargets([fixed(Target(s.outbound, UPSTREAM_HOST)) for s in sidecars]
                                      + [registered(apps, i, UPSTREAM_HOST) for i in range(n)])
                with progress.step("load, kill sidecar 1 and the node agent, restart both"):
                    window = Window(targets, rate=2 * settings["rate_rps"],
                                    seconds=settings["before_seconds"] + settings["max_after_seconds"],
                                    timeout=settings["timeout_seconds"])
                    restarts, sidecar, agent = kill_and_restart(lab, window, settings, sidecars[0], agent,
                                                                upstream.port, socket)
                    window.finish_when(lambda: sidecar_serves(sidecar, version)
                                       and agent_serves(agent, apps, version),
                                       tail=settings["tail_seconds"])
                    load = window.result()
        kill_at = settings["before_seconds"]
        groups = {"sidecars": range(0, n), "nodeagent": range(n, 2 * n)}
        patterns = {}
        for pattern, members in groups.items():
            seen = outage(load.samples, members, restarts[pattern].stopped_at,
                          timeout=settings["timeout_seconds"])
            restart = restarts[pattern]
            seen["restart_to_listening_seconds"] = round(restart.listening_at - restart.spawned_at, 3)
            # From the restart (the new process is spawned) until the last app succeeds again.
            seen["restart_to_recovery_seconds"] = (
                None if seen["recovery_seconds"] is None
                else round(restart.stopped_at + seen["recovery_seconds"] - restart.spawned_at, 3))
            seen["restart"] = restart.json()
            patterns[pattern] = seen
        return {
            "patterns": patterns,
            "timeline": timelines(load.samples, groups, {p: r.stopped_at for p, r in restarts.items()},
                                  before=kill_at, after=load.seconds - kill_at,
                                  bin_seconds=settings["bin_seconds"]),
            "scheduled": load.scheduled,
            "load_seconds": round(load.seconds, 3),
        }

    def table(self, result: dict[str, Any]) -> Table:
        rows = []
        for pattern in PATTERNS:
            run = result["patterns"][pattern]
            rows.append([
                LABELS[pattern], f"{run['apps_affected']} of {run['apps']}", f"{100 * run['share_affected']:.0f}",
                f"{run['requests']:,}", f"{run['failed']:,}", answers(run["failure_answers"]),
                seconds_cell(run["recovery_seconds"]), f"{run['restart_to_listening_seconds']:.2f}",
                seconds_cell(run["restart_to_recovery_seconds"]),
            ])
        settings = result["settings"]
        return Table(
            headers=["Fault", "Apps affected", "Apps affected (%)", "Requests", "Failed requests",
                     "Failed as", "Kill to every app recovered (s)", "Restart to listening (s)",
                     "Restart to every app recovered (s)"],
            rows=rows, align="lrrrrlrrr",
            notes=[f"{settings['apps']} apps per pattern, open-loop paced at {settings['rate_rps']} requests/s "
                   f"per pattern (both patterns side by side, {settings['before_seconds']:g} s before the kill, "
                   f"until {settings['tail_seconds']:g} s after both serve again), {settings['timeout_seconds']:g} s timeout. The "
                   f"killed helper is restarted after {settings['restart_delay_seconds']:g} s; apps on the "
                   f"node agent register again every {settings['app_refresh_seconds']:g} s, as the reference "
                   f"app does; the restarted agent finds their registrations in the cache folder the crash left "
                   f"in place, as a container restart keeps an emptyDir. An app has recovered at its first successful request after its last failure; "
                   f"restart to listening ends when the bench read the new process's listening line."],
        )

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        return {"blast_radius_timeline": timeline_chart(
            result["timeline"], LABELS, title="Failed requests around the kill", x_label="Time since the kill (s)", marker="kill")}


def agent_cache(lab: Lab) -> str:
    """The node agent's cache folder, kept across the crash as a container restart keeps an
    emptyDir: the restarted agent finds its apps' registrations there."""
    return str(lab.workdir / "nodeagent-cache")


def kill_and_restart(lab: Lab, window: Window, settings: dict[str, Any], sidecar: Helper,
                     agent: Helper, upstream_port: int, socket: str) -> tuple[dict[str, Restart], Helper, Helper]:
    """SIGKILL both helpers at the same moment, restart each (side by side); the new ones."""
    window.at(settings["before_seconds"])
    restarts = {}
    for pattern, helper in (("sidecars", sidecar), ("nodeagent", agent)):
        helper.process.kill()
        restarts[pattern] = Restart(stopped_at=window.now())
    for pattern, helper in (("sidecars", sidecar), ("nodeagent", agent)):
        helper.process.wait()
        restarts[pattern].exited_at = window.now()
    specs = {
        "sidecars": sidecar_spec(lab, "sidecar-1-restarted", upstream_port, NO_DRAIN, ports=sidecar),
        "nodeagent": node_agent_spec(lab, "nodeagent-restarted", socket, NO_DRAIN, agent_cache(lab)),
    }

    def restart(pattern: str) -> Helper:
        window.at(restarts[pattern].stopped_at + settings["restart_delay_seconds"])
        restarts[pattern].spawned_at = window.now()
        [helper] = start_helpers(lab, [specs[pattern]])
        restarts[pattern].listening_at = window.now()
        return helper

    # A thread each, so that each restart's listening moment is its own.
    with ThreadPoolExecutor(max_workers=2) as pool:
        new_sidecar, new_agent = [done.result() for done in [pool.submit(restart, p) for p in PATTERNS]]
    return restarts, new_sidecar, new_agent
