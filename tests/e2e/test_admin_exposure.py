"""Admin listeners (config, metrics, POST /drain) are bound to 127.0.0.1 and nowhere else."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import Mesh

LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


def listening_addresses(port: int) -> list[str]:
    """Every local address with a listening socket on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == LISTEN:
                found.append(_decode(address))
    return found


def _decode(hex_address: str) -> str:
    # The kernel prints each 32-bit word in host byte order (little-endian on x86 and arm64).
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses other than 127.0.0.0/8, from the kernel's routing table."""
    try:
        text = Path("/proc/net/fib_trie").read_text()
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    local = set()
    for previous, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            local.add(previous.split()[-1])
    return sorted(a for a in local if not ipaddress.ip_address(a).is_loopback)


@pytest.fixture
def admin_ports(mesh: Mesh) -> dict[str, int]:
    return {"sidecar": mesh.sidecar.ports["admin"], "nodeagent": mesh.agent.ports["admin"]}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_admin_sockets_are_bound_to_loopback_only(admin_ports: dict[str, int]) -> None:
    for name, port in admin_ports.items():
        assert listening_addresses(port) == ["127.0.0.1"], name


def test_admin_ports_refuse_connections_on_other_addresses(admin_ports: dict[str, int]) -> None:
    addresses = non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for address in addresses:
        for name, port in admin_ports.items():
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=1).close()
            print(f"{name} admin port {port} refused on {address}")
