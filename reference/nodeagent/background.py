"""A loop run as a background task: start() it once, stop() cancels it and waits for the end."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Background"]


class Background:
    """Base of the agent's long-running loops (the config watch, the heartbeat)."""

    task_name = "background"

    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """The loop; runs until cancelled."""
        raise NotImplementedError

    def start(self) -> None:
        """Run the loop in a background task."""
        if self._task is not None:
            raise RuntimeError(f"{self.task_name} already started")
        self._task = asyncio.create_task(self.run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end; a no-op if it never started."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
