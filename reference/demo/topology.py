"""What the demo runs: a control plane, reviews v1/v2/v3, and one of the two proxy patterns."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from reference.demo.processes import Component, ComponentFailed

__all__ = ["SERVICE", "Mesh", "proxy_config", "start_mesh"]

# The apps register with the node agent as this service (reference/app/__main__.py); the
# sidecar fetches the same service's config, so one document drives both patterns.
SERVICE = "reviews"
VERSIONS = ("v1", "v2", "v3")
NODE_AGENT_APPS = 3

# Short on purpose, so the demo shows a breaker opening and closing within seconds. Production
# values are larger (proxy_config.py's defaults: 5 failures, 5 s).
BREAKER = {"failure_threshold": 5, "recovery_timeout_seconds": 1.0,
           "half_open_max_calls": 1, "success_threshold": 1}

# Every child drains at once on SIGTERM: there is no load balancer to wait for on a laptop.
QUICK_DRAIN = ["--drain-delay", "0", "--drain-grace", "5"]


def proxy_config(upstream_ports: dict[str, int], weights: dict[str, int]) -> dict[str, Any]:
    """The proxy config document: route the `reviews` host by `weights` over v1/v2/v3."""
    return {
        "routes": {
            "hosts": [SERVICE],
            "http": [{
                "name": "reviews-split",
                "route": [
                    {"destination": {"host": SERVICE, "subset": version}, "weight": weight}
                    for version, weight in weights.items()
                ],
            }],
        },
        "clusters": {
            SERVICE: {version: [f"127.0.0.1:{port}"] for version, port in upstream_ports.items()},
        },
        "breaker": BREAKER,
        "timeout_seconds": 1.0,
        "retries": {"attempts": 1, "per_try_timeout_seconds": 0.5},
    }


@dataclass
class Mesh:
    """Every process of one demo run, the listeners traffic goes to, and how to reconfigure."""

    pattern: str  # "sidecar" or "nodeagent"
    workdir: Path
    token: str
    control_plane: Component | None = None
    upstreams: dict[str, Component] = field(default_factory=dict)
    proxy: Component | None = None  # the sidecar or the node agent
    apps: list[Component] = field(default_factory=list)  # the local apps next to the proxy
    retired: list[Component] = field(default_factory=list)  # killed on purpose
    targets: list[str] = field(default_factory=list)  # outbound listeners, "127.0.0.1:port"

    @property
    def admin_url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.ports['admin']}"

    @property
    def control_plane_url(self) -> str:
        assert self.control_plane is not None
        return f"http://127.0.0.1:{self.control_plane.ports['http']}"

    @property
    def upstream_ports(self) -> dict[str, int]:
        return {version: self.upstreams[version].ports["port"] for version in VERSIONS}

    def components(self) -> list[Component]:
        """Everything still owned by the demo, in start order."""
        head = [self.control_plane] if self.control_plane else []
        tail = [self.proxy] if self.proxy else []
        return [*head, *self.upstreams.values(), *tail, *self.apps]

    def check_alive(self) -> None:
        """Raise ComponentFailed if a process died that nobody killed on purpose."""
        for component in self.components():
            if not component.running:
                raise ComponentFailed(f"{component.name} exited with code {component.returncode}"
                                      f"{component.log_tail()}")

    async def put_config(self, session: aiohttp.ClientSession, weights: dict[str, int]) -> int:
        """PUT a new config version with these weights; return the version number."""
        assert self.control_plane is not None
        url = f"{self.control_plane_url}/v1/services/{SERVICE}/config"
        body = json.dumps(proxy_config(self.upstream_ports, weights))
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        async with session.put(url, data=body, headers=headers) as response:
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise ComponentFailed(f"the control plane refused the config: "
                                      f"{response.status} {answer}")
        return int(answer["version"])

    async def kill_upstream(self, version: str) -> None:
        """SIGKILL one upstream, as a crash or an OOM kill would."""
        victim = self.upstreams.pop(version)
        victim.kill()
        await victim.stop()  # only reaps it: SIGKILL leaves nothing to drain
        self.retired.append(victim)

    async def restart_upstream(self, version: str, port: int) -> None:
        """Start `version` again on the port the config names, as a restarted pod would."""
        upstream = Component(f"reviews {version} (restarted)",
                             ["app", "--version", version, "--port", str(port), *QUICK_DRAIN],
                             self.workdir)
        await upstream.start()
        self.upstreams[version] = upstream

    async def stop(self) -> dict[str, int]:
        """Stop in dependency order: apps, proxy, upstreams, control plane. name -> exit code."""
        stages = [self.apps, [self.proxy] if self.proxy else [], list(self.upstreams.values()),
                  [self.control_plane] if self.control_plane else []]
        codes: dict[str, int] = {}
        for stage in stages:
            results = await asyncio.gather(*(component.stop() for component in stage))
            codes.update({component.name: code for component, code in zip(stage, results)})
        return codes


async def start_mesh(pattern: str, workdir: Path, session: aiohttp.ClientSession,
                     weights: dict[str, int]) -> tuple[Mesh, int]:
    """Start everything for `pattern`, with `weights` as config version 1; return the mesh."""
    mesh = Mesh(pattern, workdir, token=secrets.token_urlsafe(24))
    # For trying the API by hand while the demo runs; readable by this user only.
    token_file = workdir / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(mesh.token + "\n")
    try:
        await _start_control_plane_and_upstreams(mesh)
        version = await mesh.put_config(session, weights)
        if pattern == "sidecar":
            await _start_sidecar(mesh)
        else:
            await _start_node_agent(mesh, session, version)
        # Traffic starts only once every listener has the config: no "no config yet" 503s.
        await wait_until_configured(mesh, session, version, apps=len(mesh.apps))
    except BaseException:
        await mesh.stop()
        raise
    return mesh, version


async def wait_until_configured(mesh: Mesh, session: aiohttp.ClientSession, version: int, *,
                                apps: int, timeout: float = 10.0) -> None:
    """Wait until the proxy (every app's listener, for the agent) serves `version`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _configured(mesh, session, version, apps):
        if loop.time() > deadline:
            log = mesh.proxy.log_tail() if mesh.proxy else ""
            raise ComponentFailed(f"the {mesh.pattern} did not receive config version {version} "
                                  f"within {timeout:g} s{log}")
        await asyncio.sleep(0.05)


async def _configured(mesh: Mesh, session: aiohttp.ClientSession, version: int,
                      apps: int) -> bool:
    try:
        async with session.get(f"{mesh.admin_url}/config") as response:
            view = await response.json()
    except (aiohttp.ClientError, ValueError):
        return False
    if mesh.pattern == "sidecar":
        return (view.get("version") or 0) >= version
    # The node agent lists each registered app with the version its listener serves.
    served = [app["config_version"] for app in view.get("apps", [])]
    return len(served) >= apps and all(v >= version for v in served)


async def _start_together(components: list[Component]) -> None:
    # Every start is awaited before a failure is raised, so the caller's cleanup stops all of
    # them, including those that were still starting when another one failed.
    results = await asyncio.gather(*(c.start() for c in components), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _start_control_plane_and_upstreams(mesh: Mesh) -> None:
    mesh.control_plane = Component(
        "control plane",
        ["controlplane", "--http-port", "0", "--grpc-port", "0",
         "--db", str(mesh.workdir / "controlplane.db"), *QUICK_DRAIN],
        mesh.workdir,
        # The token goes in the environment: a command-line flag would show up in `ps`.
        env={"SIDECARLAB_TOKEN": mesh.token},
    )
    mesh.upstreams = {
        version: Component(f"reviews {version}",
                           ["app", "--version", version, "--port", "0", *QUICK_DRAIN],
                           mesh.workdir)
        for version in VERSIONS
    }
    # Independent of each other, so they start side by side.
    await _start_together([mesh.control_plane, *mesh.upstreams.values()])


async def _start_sidecar(mesh: Mesh) -> None:
    assert mesh.control_plane is not None
    app = Component("local app", ["app", "--version", "v1", "--port", "0", *QUICK_DRAIN],
                    mesh.workdir)
    mesh.apps.append(app)
    await app.start()
    mesh.proxy = Component(
        "sidecar",
        ["sidecar", "--service", SERVICE,
         "--app-address", f"127.0.0.1:{app.ports['port']}",
         "--inbound-host", "127.0.0.1", "--inbound-port", "0",
         "--outbound-port", "0", "--admin-port", "0",
         "--control-plane", f"http://127.0.0.1:{mesh.control_plane.ports['http']}",
         "--cache", str(mesh.workdir / "sidecar-cache.json"), *QUICK_DRAIN],
        mesh.workdir,
    )
    await mesh.proxy.start()
    mesh.targets = [f"127.0.0.1:{mesh.proxy.ports['outbound']}"]


async def _start_node_agent(mesh: Mesh, session: aiohttp.ClientSession, version: int) -> None:
    assert mesh.control_plane is not None
    socket_path = mesh.workdir / "agent.sock"
    mesh.proxy = Component(
        "node agent",
        ["nodeagent", "--socket", str(socket_path),
         "--control-plane-grpc", f"127.0.0.1:{mesh.control_plane.ports['grpc']}",
         "--admin-port", "0", "--cache-dir", str(mesh.workdir / "agent-cache"), *QUICK_DRAIN],
        mesh.workdir,
    )
    await mesh.proxy.start()
    mesh.apps = [
        Component(f"local app {n}",
                  ["app", "--version", "v1", "--port", "0", "--node-agent", str(socket_path),
                   "--app-id", f"demo-app-{n}", *QUICK_DRAIN],
                  mesh.workdir)
        for n in range(1, NODE_AGENT_APPS + 1)
    ]
    # The first app's registration makes the agent watch `reviews`; the others register once
    # that config has arrived, so every app starts with it.
    first, *others = mesh.apps
    await first.start()
    await wait_until_configured(mesh, session, version, apps=1)
    await _start_together(others)
    # Each app got its own outbound listener from the agent: traffic goes to all of them.
    mesh.targets = [app.ports["outbound"] for app in mesh.apps]
