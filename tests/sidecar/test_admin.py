"""The admin listener: loopback only, probes, Prometheus text and the config in use."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import aiohttp
import pytest

from .conftest import single_config

# One sample line of the text format 0.0.4: name, optional labels, value (no timestamps here).
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
    r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*)?\})?'
    r' (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$'
)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of IPv4 sockets listening on `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def other_local_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, a route is chosen
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_admin_binds_loopback_even_when_inbound_listens_everywhere(start_sidecar):
    sidecar = await start_sidecar(inbound_host="0.0.0.0")
    assert listening_addresses(sidecar.ports.admin) == {"127.0.0.1"}
    assert listening_addresses(sidecar.ports.inbound) == {"0.0.0.0"}
    other = other_local_address()
    if other is None:
        pytest.skip("no non-loopback address on this machine to connect through")
    with pytest.raises(OSError):
        socket.create_connection((other, sidecar.ports.admin), timeout=1).close()
    socket.create_connection((other, sidecar.ports.inbound), timeout=1).close()


async def test_healthz_is_ok_and_config_shows_the_version_in_use(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    async with sidecar.session.get(f"{sidecar.admin}/healthz") as r:
        assert r.status == 200
    async with sidecar.session.get(f"{sidecar.admin}/config") as r:
        assert (await r.json())["version"] is None
    version = control_plane.publish("productpage", single_config(v1.address))
    await sidecar.wait_for_version(version)
    async with sidecar.session.get(f"{sidecar.admin}/config") as r:
        view = await r.json()
    assert view["version"] == version and view["service"] == "productpage"
    assert view["config"]["clusters"] == {"reviews": {"v1": [v1.address]}}
    assert view["config"]["retries"]["attempts"] == 2  # defaults are shown filled in
    assert view["breakers"]["reviews/v1"] == "closed"


async def test_metrics_are_valid_prometheus_text_and_count_traffic(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    await sidecar.wait_for_version(control_plane.publish("productpage", single_config(v1.address)))
    for _ in range(3):
        async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}):
            pass
    async with sidecar.session.get(f"{sidecar.admin}/metrics") as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    assert text.endswith("\n")
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
    assert types["sidecarlab_request_duration_seconds"] == "histogram"
    assert 'sidecarlab_upstream_requests_total{proxy="outbound",upstream="reviews/v1"} 3' in text
    assert 'sidecarlab_responses_total{proxy="outbound",code="200"} 3' in text
    assert 'sidecarlab_request_duration_seconds_count{proxy="outbound"} 3' in text
    assert 'sidecarlab_breaker_state{proxy="outbound",upstream="reviews/v1",state="closed"} 1' in text
    assert 'sidecarlab_config_version{service="productpage"} 1' in text


async def test_prestop_drain_makes_readiness_fail(upstream, control_plane, start_sidecar):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    await sidecar.wait_for_version(control_plane.publish("productpage", single_config(v1.address)))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sidecar.admin}/drain") as r:
            assert r.status == 202
        async with session.get(f"{sidecar.admin}/readyz") as r:
            assert (r.status, await r.text()) == (503, "draining\n")
