"""SIGTERM under load: the sidecar and the app behind it drain and lose no request."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from pathlib import Path

from tests.e2e.conftest import (
    Mesh,
    app_spec,
    get,
    put_config,
    reviews_config,
    sidecar_spec,
    start,
    wait_for_version,
)

SERVICE = "e2e-drain"
WORKERS = 6
APP_LATENCY_MS = 100  # so that requests are in flight when SIGTERM arrives
# The kubelet sends SIGTERM to every container of the pod at once. The sidecar stops taking
# inbound requests after its delay; the app must outlive that, or the sidecar's last inbound
# requests would find the app gone. Hence the app's longer delay.
SIDECAR_DELAY = 0.75
APP_DELAY = 1.5


class Load:
    """Worker threads calling through the sidecar until the "load balancer" stops sending."""

    def __init__(self, inbound: int, outbound: int, admin: int) -> None:
        self.targets = [(inbound, None), (outbound, "reviews")]
        self.admin = admin
        self.outcomes: Counter[str] = Counter()
        self.in_flight_at_sigterm = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(n,)) for n in range(WORKERS)]
        self._threads.append(threading.Thread(target=self._watch_readiness))

    def _work(self, number: int) -> None:
        port, host = self.targets[number % 2]
        while not self._stop.is_set():
            with self._lock:
                self._in_flight += 1
            outcome = self._one(port, host)
            with self._lock:
                self._in_flight -= 1
                self.outcomes[outcome] += 1

    @staticmethod
    def _one(port: int, host: str | None) -> str:
        # A fresh connection per request: a keep-alive connection closed between two requests
        # is a client-side retry question, not a lost request.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/reviews/1", headers={"Host": host} if host else {})
            response = connection.getresponse()
            response.read()
            return str(response.status)
        except OSError as error:
            return type(error).__name__
        finally:
            connection.close()

    def _watch_readiness(self) -> None:
        # Plays the endpoints controller: once /readyz fails, no new request is sent here.
        while not self._stop.is_set():
            try:
                ready = get(self.admin, "/readyz", timeout=1).status == 200
            except OSError:
                ready = False
            if not ready:
                self._stop.set()
            time.sleep(0.02)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def note_sigterm(self) -> None:
        with self._lock:
            self.in_flight_at_sigterm = self._in_flight

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=15)


def test_sigterm_under_load_loses_no_request_through_the_sidecar_or_the_app(
    mesh: Mesh, log_dir: Path
) -> None:
    reply = put_config(mesh.cp_port, SERVICE, reviews_config(mesh.upstream_ports, {"v1": 100}))
    assert reply.status == 200
    # Later flags win: these delays replace the quick ones the spec helpers put first.
    (app,) = start(log_dir, app_spec("drain-app", "v1", "--latency-ms", str(APP_LATENCY_MS),
                                     "--drain-delay", str(APP_DELAY), "--drain-grace", "10"))
    (sidecar,) = start(log_dir, sidecar_spec(
        "drain-sidecar", SERVICE, app.ports["port"], f"http://127.0.0.1:{mesh.cp_port}",
        "--drain-delay", str(SIDECAR_DELAY), "--drain-grace", "10"))
    wait_for_version(sidecar.ports["admin"], SERVICE, reply.json()["version"])
    load = Load(sidecar.ports["inbound"], sidecar.ports["outbound"], sidecar.ports["admin"])

    load.start()
    time.sleep(0.5)
    load.note_sigterm()
    sidecar.terminate()
    app.terminate()
    codes = {"sidecar": sidecar.wait(), "app": app.wait()}
    load.join()

    assert codes == {"sidecar": 0, "app": 0}
    assert load.in_flight_at_sigterm > 0, "the test should catch requests in flight"
    assert set(load.outcomes) == {"200"}, dict(load.outcomes)
    assert load.outcomes["200"] > WORKERS
