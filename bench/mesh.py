"""The reference systems wired up for the lab: control plane, sidecars, a node agent and its apps.

Every process runs on 127.0.0.1 on a free port, logs to a file in a temporary folder, and is
stopped when the `Lab` context ends, whatever happened inside it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import Request, urlopen

from .procs import listening_line, spawn_component

SERVICE = "bench"
# The Host header both helpers route on: the config's only virtual host.
UPSTREAM_HOST = "upstream"
TOKEN = "bench-token"
# Nothing to drain for on loopback: stop at once so that tearing down 50 sidecars is quick.
QUICK_DRAIN = ("--drain-delay", "0", "--drain-grace", "2")
START_TIMEOUT = 30.0  # a cold start imports aiohttp (and grpcio); several start at once


def proxy_config(upstream_port: int) -> dict[str, Any]:
    """One route to one upstream, and no retries: every request is exactly one upstream call."""
    return {
        "routes": {"hosts": [UPSTREAM_HOST],
                   "http": [{"route": [{"destination": {"host": UPSTREAM_HOST, "subset": "v1"}}]}]},
        "clusters": {UPSTREAM_HOST: {"v1": [f"127.0.0.1:{upstream_port}"]}},
        "retries": {"attempts": 0},
    }


@dataclass(frozen=True)
class Helper:
    """One running sidecar or node agent: its process and the listeners the bench uses."""

    process: subprocess.Popen
    admin: int
    outbound: int = 0  # the sidecar's outbound listener; 0 for the node agent
    socket: str = ""  # the node agent's local API
    inbound: int = 0  # the sidecar's inbound listener (where other services call its app)

    @property
    def pid(self) -> int:
        return self.process.pid


class Lab:
    """Starts reference processes for one scenario and stops all of them on exit."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._processes: list[subprocess.Popen] = []
        self.workdir = Path(".")
        self.control_plane: dict[str, Any] = {}

    def __enter__(self) -> Lab:
        self.workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="sidecarlab-bench-")))
        self._stack.callback(self._stop_all)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def enter(self, context: Any) -> Any:
        """Keep another context (an nginx, say) open until the lab closes."""
        return self._stack.enter_context(context)

    def start(self, specs: list[tuple[str, list[str]]], env: dict[str, str] | None = None) -> list[tuple[subprocess.Popen, dict]]:
        """Start `python -m reference ARGS` for each (name, args) side by side; their listening lines."""
        started = []
        for name, args in specs:
            log = self._stack.enter_context((self.workdir / f"{name}.log").open("wb"))
            process = spawn_component("reference", *args, env=env, log=log)
            self._processes.append(process)
            started.append((name, process))
        # All spawned before any is waited for, so the interpreters start (and import) in
        # parallel. A thread per child reads its stdout, so a hung child times out.
        with ThreadPoolExecutor(max_workers=len(started)) as pool:
            futures = [(name, process, pool.submit(listening_line, process, name))
                       for name, process in started]
            deadline = time.monotonic() + START_TIMEOUT
            return [(process, self._result(name, process, future, deadline))
                    for name, process, future in futures]

    def _result(self, name: str, process: subprocess.Popen, future: Future, deadline: float) -> dict:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            process.kill()  # closes its stdout, which ends the reader thread
            raise TimeoutError(f"{name} did not listen within {START_TIMEOUT:g} s:\n{self.log_tail(name)}") from None
        except RuntimeError:
            raise RuntimeError(f"{name} exited before listening:\n{self.log_tail(name)}") from None

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.workdir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def _stop_all(self) -> None:
        # SIGTERM to all first, then wait: the drains overlap instead of adding up.
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self._processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ----- the systems --------------------------------------------------------------------

    def start_control_plane(self, upstream_port: int) -> int:
        """Start the control plane with the bench config; return the config version."""
        [(_, ports)] = self.start(
            [("controlplane", ["controlplane", "--http-port", "0", "--grpc-port", "0",
                               "--db", str(self.workdir / "controlplane.db"), *QUICK_DRAIN])],
            env={"SIDECARLAB_TOKEN": TOKEN},  # an env var, not a flag that `ps` would show
        )
        self.control_plane = ports
        return self.put_config(proxy_config(upstream_port))

    def put_config(self, config: dict[str, Any], *, service: str = SERVICE) -> int:
        request = Request(
            f"http://127.0.0.1:{self.control_plane['http']}/v1/services/{service}/config",
            data=json.dumps(config).encode(), method="PUT",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urlopen(request, timeout=5) as response:
            return int(json.loads(response.read())["version"])

    def start_sidecars(self, first: int, count: int, app_port: int, version: int, *,
                       service: str = SERVICE, extra_args: tuple[str, ...] = (),
                       name: str = "sidecar") -> list[Helper]:
        """Start sidecars number first..first+count-1 and wait until each serves `version`."""
        specs = [
            (f"{name}-{n}",
             ["sidecar", "--service", service, *extra_args, "--app-address", f"127.0.0.1:{app_port}",
              "--inbound-host", "127.0.0.1", "--inbound-port", "0", "--outbound-port", "0",
              "--admin-port", "0", "--control-plane", f"http://127.0.0.1:{self.control_plane['http']}",
              *QUICK_DRAIN])
            for n in range(first, first + count)
        ]
        helpers = [Helper(process, admin=ports["admin"], outbound=ports["outbound"])
                   for process, ports in self.start(specs)]
        for helper in helpers:
            wait_until(lambda h=helper: (admin_json(h.admin).get("version") or 0) >= version,
                       f"sidecar on admin port {helper.admin} to get config {version}")
        return helpers

    def start_node_agent(self, *, log_level: str = "WARNING") -> Helper:
        socket = str(self.workdir / "agent.sock")
        [(process, ports)] = self.start([(
            "nodeagent",
            ["nodeagent", "--socket", socket, "--admin-port", "0", "--log-level", log_level,
             "--control-plane-grpc", f"127.0.0.1:{self.control_plane['grpc']}", *QUICK_DRAIN],
        )])
        return Helper(process, admin=ports["admin"], socket=socket)


def register_apps(agent: Helper, app_ids: list[str], version: int, *, service: str = SERVICE) -> list[int]:
    """Register apps with the node agent, as each app's start-up would; their outbound ports."""
    # Imported here: only the node-agent scenarios need grpcio in the bench process.
    import grpc

    from reference.protos import nodeagent_pb2, nodeagent_pb2_grpc

    ports = []
    with grpc.insecure_channel(f"unix://{agent.socket}") as channel:
        stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
        for app_id in app_ids:
            # Register is idempotent and the agent keeps an app until it deregisters, so one
            # call stands in for reference/app/registration.py's register-and-refresh loop.
            reply = stub.Register(nodeagent_pb2.RegisterRequest(app_id=app_id, service=service),
                                  timeout=10, wait_for_ready=True)
            ports.append(int(reply.outbound_address.rsplit(":", 1)[1]))
    wanted = set(app_ids)

    def configured() -> bool:
        apps = [app for app in admin_json(agent.admin).get("apps", []) if app["app_id"] in wanted]
        return len(apps) == len(wanted) and all(app["config_version"] >= version for app in apps)

    wait_until(configured, f"{len(app_ids)} apps on the node agent to get config {version}")
    return ports


def admin_json(port: int) -> dict[str, Any]:
    """GET /config from a helper's admin listener; {} while it cannot answer."""
    try:
        with urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
            return json.loads(response.read())
    except (URLError, OSError, ValueError):
        return {}


def wait_until(condition, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)
