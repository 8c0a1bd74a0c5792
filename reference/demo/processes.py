"""The demo's child processes: start one, learn its ports, stop it and check how it exited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

__all__ = ["Component", "ComponentFailed", "kill_stragglers"]

# The folder that holds the `reference` package, so `python -m reference ...` works from any
# working directory, also after the package was copied into another project.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent

# Generous: a cold start imports aiohttp (and grpcio for the node agent) on a busy machine.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

# Every child started and not yet reaped, for kill_stragglers().
_started: set[Component] = set()


class ComponentFailed(RuntimeError):
    """A child process could not start, or died while the demo needed it."""


class Component:
    """One `python -m reference ...` child: its listening line, its log file, its exit code."""

    def __init__(self, name: str, args: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name.replace(' ', '-')}.log"
        self.ports: dict[str, Any] = {}
        self._env = env or {}
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._stdout_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Start the process and return its `listening` line (the ports it bound)."""
        paths = [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]
        pythonpath = os.pathsep.join(path for path in paths if path)
        self._log = self.log_path.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reference", *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,  # a file, not a pipe: nobody reads logs live, and a full pipe blocks
            env={**os.environ, "PYTHONPATH": pythonpath, **self._env},
            # A session of its own: Ctrl-C in the terminal reaches only the demo, which then
            # stops the children in order (apps before their proxy, the control plane last).
            start_new_session=True,
        )
        _started.add(self)
        try:
            self.ports = await asyncio.wait_for(self._listening_line(), timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise ComponentFailed(f"{self.name} did not start listening within {timeout:g} s"
                                  f"{self.log_tail()}") from None
        # Keep reading stdout so that a chatty child never blocks on a full pipe.
        self._stdout_task = asyncio.create_task(self._copy_stdout_to_log())
        return self.ports

    async def _listening_line(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "listening":
                return event
        code = await self._process.wait()
        raise ComponentFailed(f"{self.name} exited with code {code} before listening"
                              f"{self.log_tail()}")

    async def _copy_stdout_to_log(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            if self._log is not None and not self._log.closed:
                self._log.write(raw)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to drain (a crash, an OOM kill)."""
        if self.running:
            assert self._process is not None
            # os.kill, not the transport: this also runs after the event loop has closed.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait for the drain, SIGKILL if it takes longer than `timeout`; exit code."""
        process = self._process
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self._stdout_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stdout_task
        if self._log is not None:
            self._log.close()
        _started.discard(self)
        assert process.returncode is not None
        return process.returncode

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the child's stderr, indented, for an error message."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = text.strip().splitlines()[-lines:]
        return "".join(f"\n    | {line}" for line in tail)


def kill_stragglers() -> None:
    """SIGKILL every child not stopped yet: the last resort when the demo exits abruptly."""
    for component in list(_started):
        component.kill()
