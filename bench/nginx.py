"""Start Debian's nginx with a generated config in a temporary prefix: the lab's anchor."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .procs import free_port, wait_for_port

MAIN = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr error;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {http}
}}
"""

UPSTREAM = """
server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{ return 200 "{body}"; }}
}}
"""

# The anchor: nginx as a sidecar, one worker, proxy_pass with upstream keep-alive.
PROXY = """
upstream app {{
    server 127.0.0.1:{upstream};
    keepalive 64;
}}
server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


class Nginx:
    """One nginx master with one worker, serving `http_block` on `port`."""

    def __init__(self, http_block: str, port: int) -> None:
        self.port = port
        self._http = http_block
        self._prefix = Path(tempfile.mkdtemp(prefix="sidecarlab-nginx-"))
        self._process: subprocess.Popen | None = None

    @classmethod
    def upstream(cls, body_bytes: int = 3) -> "Nginx":
        """An upstream answering every request with 200 and a body of `body_bytes` bytes."""
        # Istio's published proxy costs use 1 KB payloads; the lab can match that size.
        body = "ok\\n" if body_bytes == 3 else "x" * body_bytes
        port = free_port()
        return cls(UPSTREAM.format(port=port, body=body), port)

    @classmethod
    def proxy_to(cls, upstream_port: int) -> "Nginx":
        port = free_port()
        return cls(PROXY.format(port=port, upstream=upstream_port), port)

    def __enter__(self) -> "Nginx":
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise SystemExit("nginx is not installed (Debian: apt-get install nginx)")
        # As root, nginx's worker would switch to nobody, who cannot write our temp prefix.
        user = "user root;" if os.geteuid() == 0 else ""
        (self._prefix / "nginx.conf").write_text(MAIN.format(prefix=self._prefix, user=user, http=self._http))
        self._process = subprocess.Popen(
            [binary, "-p", str(self._prefix), "-c", str(self._prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for_port(self.port, process=self._process)
        return self

    @property
    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self._process.pid}/task/{self._process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    @property
    def pids(self) -> list[int]:
        return [self._process.pid, *self.worker_pids]

    def __exit__(self, *exc) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        shutil.rmtree(self._prefix, ignore_errors=True)
