"""End-to-end fixtures: every component as a real `python -m reference ...` process on 127.0.0.1.

Processes shared by the whole folder (session scope): one control plane, the reviews upstreams
v1/v2/v3, a sidecar in front of its own local app, and a node agent. Each test PUTs the config
it needs before it acts, so tests do not depend on each other's order. Tests that break
something (kill the control plane, SIGTERM a proxy) start processes of their own.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.procs import ROOT

TOKEN = "e2e-token-5b1c9d"
START_TIMEOUT = 20.0  # a cold start imports aiohttp and grpcio; generous for a busy machine
STOP_TIMEOUT = 15.0
VERSIONS = ("v1", "v2", "v3")
QUICK_DRAIN = ("--drain-delay", "0", "--drain-grace", "5")


# ----- processes --------------------------------------------------------------------------------

_started: list[Proc] = []  # every child, so that none outlives the test run


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests() -> Iterator[None]:
    """Set up first and torn down last: SIGKILL whatever a failed test or fixture left."""
    yield
    for proc in _started:
        proc.kill()


class Proc:
    """One `python -m reference ARGS` child: its listening line, its stderr log, its exit."""

    def __init__(self, name: str, args: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self._lines: queue.Queue[str | None] = queue.Queue()
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "reference", *args],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, **(env or {})},
            )
        # A reader thread: stdout is read to the end, so a chatty child never blocks, and
        # waiting for the listening line can time out.
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.ports: dict[str, Any] = {}
        _started.append(self)

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"{self.name} did not listen within {timeout} s\n"
                                     f"{self.log()}") from None
            if line is None:
                raise AssertionError(f"{self.name} exited with {self.popen.wait()} before "
                                     f"listening\n{self.log()}")
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "listening":
                self.ports = event
                return event

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM\n"
                                 f"{self.log()}") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait: the exit code (0 after a clean drain)."""
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def log(self) -> str:
        return f"--- {self.name} stderr ---\n{self.log_path.read_text(errors='replace')[-3000:]}"


def start(log_dir: Path, *specs: tuple[str, list[str]], env: dict[str, str] | None = None
          ) -> list[Proc]:
    """Start several processes side by side and wait until all of them listen."""
    procs = [Proc(name, args, log_dir, env) for name, args in specs]
    try:
        for proc in procs:
            proc.wait_listening()
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return procs


def stop_all(*procs: Proc) -> dict[str, int]:
    """SIGTERM all at once, then collect the exit codes."""
    for proc in procs:
        proc.terminate()
    return {proc.name: proc.wait() for proc in procs}


def app_spec(name: str, version: str, *extra: str, port: int = 0) -> tuple[str, list[str]]:
    return name, ["app", "--version", version, "--port", str(port), *QUICK_DRAIN, *extra]


def sidecar_spec(name: str, service: str, app_port: int, control_plane: str,
                 *extra: str) -> tuple[str, list[str]]:
    return name, ["sidecar", "--service", service, "--app-address", f"127.0.0.1:{app_port}",
                  "--inbound-host", "127.0.0.1", "--inbound-port", "0", "--outbound-port", "0",
                  "--admin-port", "0", "--control-plane", control_plane, "--wait", "5",
                  *extra]


def agent_spec(name: str, socket_path: Path, grpc_port: int, *extra: str) -> tuple[str, list[str]]:
    return name, ["nodeagent", "--socket", str(socket_path),
                  "--control-plane-grpc", f"127.0.0.1:{grpc_port}", "--admin-port", "0",
                  "--node-id", name, *QUICK_DRAIN, *extra]


def control_plane_spec(db: Path) -> tuple[str, list[str]]:
    return "controlplane", ["controlplane", "--http-port", "0", "--grpc-port", "0",
                            "--db", str(db), "--log-level", "WARNING", *QUICK_DRAIN]


# ----- HTTP -------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, *, host: str | None = None,
            body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> Reply:
    """One request on a fresh connection to 127.0.0.1:port."""
    all_headers = dict(headers or {})
    if host is not None:
        all_headers["Host"] = host
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                 time.monotonic() - started)


def get(port: int, path: str, **options: Any) -> Reply:
    return request(port, "GET", path, **options)


def put_config(cp_port: int, service: str, document: Any, *, token: str | None = TOKEN) -> Reply:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return request(cp_port, "PUT", f"/v1/services/{service}/config", body=body, headers=headers)


def versions_seen(port: int, count: int, *, host: str = "reviews") -> Counter[str]:
    """Send `count` GET /reviews/N through an outbound listener; count the versions answering."""
    seen: Counter[str] = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for number in range(count):
            connection.request("GET", f"/reviews/{number}", headers={"Host": host})
            response = connection.getresponse()
            data = response.read()
            ok = response.status == 200
            seen[json.loads(data)["version"] if ok else str(response.status)] += 1
    finally:
        connection.close()
    return seen


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str,
               interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ----- the proxies' admin listeners -------------------------------------------------------------

SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def metrics(admin_port: int) -> list[tuple[str, dict[str, str], float]]:
    """The labelled samples of /metrics as (name, labels, value)."""
    text = get(admin_port, "/metrics").body.decode()
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
            samples.append((match[1], labels, float(match[3])))
    return samples


def config_version(admin_port: int, service: str) -> int | None:
    for name, labels, value in metrics(admin_port):
        if name == "sidecarlab_config_version" and labels.get("service") == service:
            return int(value)
    return None


def breaker_states(admin_port: int) -> dict[tuple[str, str], str]:
    """(proxy, upstream) -> the state its breaker is in."""
    return {(labels["proxy"], labels["upstream"]): labels["state"]
            for name, labels, value in metrics(admin_port)
            if name == "sidecarlab_breaker_state" and value == 1}


def wait_for_version(admin_port: int, service: str, version: int, timeout: float = 5.0) -> float:
    """Wait until the proxy serves `version` of `service`; return how long it took."""
    started = time.monotonic()
    wait_until(lambda: (config_version(admin_port, service) or 0) >= version,
               timeout=timeout, what=f"{service} config version {version} on the proxy")
    return time.monotonic() - started


# ----- config documents -------------------------------------------------------------------------

def reviews_config(ports: dict[str, int], weights: dict[str, int], *,
                   extra_clusters: dict[str, int] | None = None,
                   **settings: Any) -> dict[str, Any]:
    """Route the `reviews` host by `weights`; each extra cluster is one endpoint, no route."""
    clusters: dict[str, Any] = {"reviews": {v: [f"127.0.0.1:{p}"] for v, p in ports.items()}}
    for name, port in (extra_clusters or {}).items():
        clusters[name] = {"v1": [f"127.0.0.1:{port}"]}
    return {
        "routes": {"hosts": ["reviews"], "http": [{"name": "split", "route": [
            {"destination": {"host": "reviews", "subset": v}, "weight": w}
            for v, w in weights.items()]}]},
        "clusters": clusters,
        **settings,
    }


# ----- an upstream that records what reaches it -------------------------------------------------

@dataclass
class Recorder:
    """A plain HTTP/1.1 server in the test process that records every request it receives."""

    port: int = 0
    seen: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.seen]


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    record = Recorder()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            record.seen.append((self.command, self.path, list(self.headers.items())))
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    record.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield record
    server.shutdown()
    server.server_close()


# ----- the shared processes ---------------------------------------------------------------------

@dataclass
class Mesh:
    """The session's processes and their ports."""

    control_plane: Proc
    upstreams: dict[str, Proc]
    local_app: Proc
    sidecar: Proc
    agent: Proc
    agent_socket: Path

    @property
    def cp_port(self) -> int:
        return self.control_plane.ports["http"]

    @property
    def upstream_ports(self) -> dict[str, int]:
        return {v: proc.ports["port"] for v, proc in self.upstreams.items()}


SIDECAR_SERVICE = "e2e-sidecar"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("e2e")
    env = {"SIDECARLAB_TOKEN": TOKEN}
    control_plane, *rest = start(
        log_dir, control_plane_spec(work / "cp.db"),
        *(app_spec(f"reviews-{v}", v) for v in VERSIONS), app_spec("local-app", "v1"),
        env=env,
    )
    upstreams = dict(zip(VERSIONS, rest[:3]))
    local_app = rest[3]
    cp_url = f"http://127.0.0.1:{control_plane.ports['http']}"
    socket_path = work / "agent.sock"
    sidecar, agent = start(
        log_dir,
        sidecar_spec("sidecar", SIDECAR_SERVICE, local_app.ports["port"], cp_url, *QUICK_DRAIN),
        agent_spec("nodeagent", socket_path, control_plane.ports["grpc"]),
    )
    everything = [sidecar, agent, local_app, *upstreams.values(), control_plane]
    try:
        yield Mesh(control_plane, upstreams, local_app, sidecar, agent, socket_path)
    finally:
        codes = stop_all(sidecar, agent)
        codes.update(stop_all(local_app, *upstreams.values(), control_plane))
        for proc in everything:
            proc.kill()
    # A process that did not drain and exit 0 on SIGTERM is a bug worth an error here.
    assert codes == {name: 0 for name in codes}, codes
