"""The sidecar pattern end to end: traffic, weighted split, config changes, bad configs, auth."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest

from tests.e2e.conftest import (
    SIDECAR_SERVICE,
    Mesh,
    Recorder,
    config_version,
    get,
    put_config,
    reviews_config,
    versions_seen,
    wait_for_version,
)

# Smooth weighted round-robin gives every destination exactly its weight in any run of 100
# consecutive picks (weights sum to 100), so 100 requests at 90/10 should be exactly 90/10.
# One request of slack: a request that fails and is retried goes to the same upstream, so it
# cannot shift the split, but this way a single stray pick (a probe, a test added later) does
# not turn into a flaky failure. Anything beyond that is a real routing bug.
SPLIT_TOLERANCE = 1

# How long a new version may take to go from the control plane's PUT to the sidecar. The
# sidecar long-polls, so it is usually milliseconds; the bound is wide for a loaded machine.
PROPAGATION_BOUND = 3.0


def apply(mesh: Mesh, document: dict[str, Any]) -> int:
    """PUT `document` for the sidecar's service and wait until the sidecar serves it."""
    reply = put_config(mesh.cp_port, SIDECAR_SERVICE, document)
    assert reply.status == 200, reply.body
    version = reply.json()["version"]
    wait_for_version(mesh.sidecar.ports["admin"], SIDECAR_SERVICE, version,
                     timeout=PROPAGATION_BOUND)
    return version


def assert_split(seen: dict[str, int], expected: dict[str, int]) -> None:
    for version, count in expected.items():
        assert abs(seen.get(version, 0) - count) <= SPLIT_TOLERANCE, (
            f"expected about {expected} (+-{SPLIT_TOLERANCE}), saw {dict(seen)}")


def test_traffic_reaches_the_app_inbound_and_the_upstream_outbound(mesh: Mesh) -> None:
    apply(mesh, reviews_config(mesh.upstream_ports, {"v3": 100}))

    inbound = get(mesh.sidecar.ports["inbound"], "/reviews/7")
    outbound = get(mesh.sidecar.ports["outbound"], "/reviews/7", host="reviews")

    # The local app is a v1 instance; the outbound route sends everything to v3.
    assert inbound.status == 200 and inbound.json()["version"] == "v1"
    assert outbound.status == 200 and outbound.json()["version"] == "v3"
    assert inbound.json()["id"] == outbound.json()["id"] == 7
    assert "sidecarlab" in inbound.headers["via"]


def test_weighted_split_is_exact_per_window_of_one_hundred(mesh: Mesh) -> None:
    apply(mesh, reviews_config(mesh.upstream_ports, {"v1": 90, "v2": 10, "v3": 0}))

    seen = versions_seen(mesh.sidecar.ports["outbound"], 100)

    assert_split(seen, {"v1": 90, "v2": 10, "v3": 0})


def test_config_change_moves_the_split_within_the_propagation_bound(mesh: Mesh) -> None:
    apply(mesh, reviews_config(mesh.upstream_ports, {"v1": 90, "v2": 10}))
    reply = put_config(mesh.cp_port, SIDECAR_SERVICE,
                       reviews_config(mesh.upstream_ports, {"v1": 50, "v2": 50}))
    assert reply.status == 200

    took = wait_for_version(mesh.sidecar.ports["admin"], SIDECAR_SERVICE,
                            reply.json()["version"], timeout=PROPAGATION_BOUND)
    seen = versions_seen(mesh.sidecar.ports["outbound"], 100)

    assert took < PROPAGATION_BOUND
    assert_split(seen, {"v1": 50, "v2": 50})


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"{not json", "json"),
        ({"routes": {"hosts": ["reviews"], "http": []}}, "clusters"),
        ({"routes": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v9"}}]}]},
          "clusters": {"reviews": {"v1": ["127.0.0.1:1"]}}}, "v9"),
        ({"routes": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 70},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]}]},
          "clusters": {"reviews": {"v1": ["127.0.0.1:1"], "v2": ["127.0.0.1:2"]}}}, "sum"),
        ({"routes": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}}]}]},
          "clusters": {"reviews": {"v1": ["no-port-here"]}}}, "clusters.reviews.v1"),
    ],
    ids=["not-json", "no-clusters", "unknown-subset", "weights-not-100", "bad-endpoint"],
)
def test_malformed_config_gets_400_with_the_reason_and_changes_nothing(
    mesh: Mesh, document: Any, reason: str
) -> None:
    version = apply(mesh, reviews_config(mesh.upstream_ports, {"v2": 100}))

    reply = put_config(mesh.cp_port, SIDECAR_SERVICE, document)

    assert reply.status == 400
    assert reason in reply.json()["error"].lower(), reply.json()
    latest = get(mesh.cp_port, f"/v1/services/{SIDECAR_SERVICE}/config").json()
    assert latest["version"] == version
    assert config_version(mesh.sidecar.ports["admin"], SIDECAR_SERVICE) == version
    assert versions_seen(mesh.sidecar.ports["outbound"], 10) == {"v2": 10}


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_unauthenticated_put_gets_401_and_changes_nothing(mesh: Mesh, token: str | None) -> None:
    version = apply(mesh, reviews_config(mesh.upstream_ports, {"v1": 100}))

    reply = put_config(mesh.cp_port, SIDECAR_SERVICE,
                       reviews_config(mesh.upstream_ports, {"v3": 100}), token=token)

    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert get(mesh.cp_port, f"/v1/services/{SIDECAR_SERVICE}/config").json()["version"] == version


# ----- request smuggling: raw bytes, because an HTTP client library would refuse to send them ---

SMUGGLED = "/smuggled"

AMBIGUOUS_FRAMINGS = {
    # The front end believes one length, the back end the other: the tail becomes a request.
    "te-and-cl": (b"POST /front HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET " + SMUGGLED.encode() + b" HTTP/1.1\r\nHost: echo\r\n\r\n"),
    "two-content-lengths": (b"POST /front HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n"
                            b"Content-Length: 44\r\n\r\n"
                            b"GET " + SMUGGLED.encode() + b" HTTP/1.1\r\nHost: echo\r\n\r\n"),
    "te-not-chunked": (b"POST /front HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: identity\r\n"
                       b"\r\nGET " + SMUGGLED.encode() + b" HTTP/1.1\r\nHost: echo\r\n\r\n"),
}


def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` as is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def with_echo_cluster(mesh: Mesh, recorder: Recorder) -> None:
    apply(mesh, reviews_config(mesh.upstream_ports, {"v1": 100},
                               extra_clusters={"echo": recorder.port}))


def marker_seen(mesh: Mesh, recorder: Recorder, marker: str) -> list[str]:
    """Send a normal request after the attack; once it arrived, anything sent before it has too."""
    assert get(mesh.sidecar.ports["outbound"], marker, host="echo").status == 200
    paths = recorder.paths()
    assert marker in paths
    return paths[: paths.index(marker)]


@pytest.mark.parametrize("framing", list(AMBIGUOUS_FRAMINGS))
def test_ambiguous_framing_is_refused_and_never_reaches_the_upstream(
    mesh: Mesh, recorder: Recorder, framing: str
) -> None:
    with_echo_cluster(mesh, recorder)
    before = len(recorder.seen)

    answer = raw_exchange(mesh.sidecar.ports["outbound"], AMBIGUOUS_FRAMINGS[framing])

    # aiohttp's parser answers its own refusals as HTTP/1.0; the proxy's checks as HTTP/1.1.
    assert re.match(rb"HTTP/1\.[01] (400|501) ", answer), answer[:200]
    status_lines = re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", answer)
    assert len(status_lines) == 1, "one answer only: the bytes after the body were not parsed"
    arrived = marker_seen(mesh, recorder, f"/marker-{framing}")[before:]
    assert SMUGGLED not in arrived and "/front" not in arrived, arrived


def test_fields_named_in_connection_are_not_forwarded(mesh: Mesh, recorder: Recorder) -> None:
    with_echo_cluster(mesh, recorder)
    payload = (b"GET /hop HTTP/1.1\r\nHost: echo\r\nConnection: close, X-Foo\r\n"
               b"X-Foo: meant-for-the-first-hop-only\r\nX-Bar: end-to-end\r\n\r\n")

    answer = raw_exchange(mesh.sidecar.ports["outbound"], payload)

    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    method, path, headers = next(seen for seen in recorder.seen if seen[1] == "/hop")
    names = {name.lower() for name, _ in headers}
    assert "x-foo" not in names
    assert "x-bar" in names  # an ordinary end-to-end field still goes through
