"""Process helpers for the lab: free ports, waiting for listeners, memory and CPU readings."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, *, process: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"process exited with {process.returncode} before listening: {error}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def spawn_component(*args: str, env: dict[str, str] | None = None,
                    log: IO[bytes] | None = None) -> subprocess.Popen:
    """Start `python -m ARGS` without waiting; stderr goes to `log` (a file) when given."""
    # A log file rather than a pipe for long runs: nobody reads a pipe while the bench
    # measures, and a child that logs more than the pipe holds would block.
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log if log is not None else subprocess.PIPE,
        text=True, env={**os.environ, **(env or {})},
    )


def listening_line(process: subprocess.Popen, what: str = "process") -> dict:
    """Read stdout up to the process's `listening` JSON line and return it."""
    for line in process.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "listening":
            return event
    error = process.stderr.read() if process.stderr else "(see its log)"
    raise RuntimeError(f"{what} exited before listening: {error}")


def start_component(*args: str, env: dict[str, str] | None = None,
                    log: IO[bytes] | None = None) -> tuple[subprocess.Popen, dict]:
    """Start `python -m reference ARGS` and return it with its `listening` line."""
    process = spawn_component(*args, env=env, log=log)
    return process, listening_line(process, " ".join(args[:1]))


def stop(process: subprocess.Popen, timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB (10^6 bytes), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size in MB: shared pages split between the processes sharing them."""
    # RSS counts the interpreter's shared pages once per process, so a sum of RSS over many
    # Python processes overstates what they take together; a sum of PSS does not.
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _first_line(command: list[str], pattern: str) -> str:
    """The first match of `pattern` in a command's output (stdout and stderr), or ''."""
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        return ""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else ""


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return 0.0


def _commit() -> str:
    sha = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], r"(\w+)")
    if not sha:
        return ""
    # Uncommitted changes mean the numbers belong to a tree no commit names; say so.
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10).stdout
    return sha + ("-dirty" if status.strip() else "")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def machine() -> dict:
    """What the numbers were measured on (the lab's Rule 1)."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        # The libraries the helpers' data path runs on (uvloop: "" when absent, so asyncio's loop).
        "aiohttp": _package_version("aiohttp"),
        "uvloop": _package_version("uvloop"),
        "grpcio": _package_version("grpcio"),
        "platform": sys.platform,
        "nginx": _first_line([nginx, "-v"], r"nginx/(\S+)"),
        "wrk": _first_line(["wrk", "-v"], r"wrk (\S+)"),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
