"""Traffic at a bounded rate through the proxies' outbound listeners, and what came back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

__all__ = ["BREAKER_OPEN", "FAILED", "Tally", "drive"]

# Outcomes besides a version name: a 503 the proxy's breaker answered without calling the
# upstream (it sets `x-sidecarlab-breaker: open`), and every other failure.
BREAKER_OPEN = "fast 503"
FAILED = "failed"

# More in flight than this means the mesh is stuck; sending faster would only hide it.
MAX_IN_FLIGHT = 64
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=3.0)


@dataclass
class Tally:
    """Counts of outcomes since the start, and the outcomes of the last `window` seconds."""

    window: float = 1.0
    stage: str = ""  # outcomes are also counted per stage of the timeline
    total: Counter[str] = field(default_factory=Counter)
    by_stage: dict[str, Counter[str]] = field(default_factory=dict)
    recent: deque[tuple[float, str]] = field(default_factory=deque)
    fast_503_seconds: list[float] = field(default_factory=list)  # how long breaker 503s took

    def record(self, outcome: str, seconds: float) -> None:
        now = time.monotonic()
        self.total[outcome] += 1
        self.by_stage.setdefault(self.stage, Counter())[outcome] += 1
        self.recent.append((now, outcome))
        if outcome == BREAKER_OPEN:
            self.fast_503_seconds.append(seconds)

    def last_window(self) -> Counter[str]:
        """Outcomes of the requests that finished in the last `window` seconds."""
        horizon = time.monotonic() - self.window
        while self.recent and self.recent[0][0] < horizon:
            self.recent.popleft()
        return Counter(outcome for _, outcome in self.recent)

    @property
    def served(self) -> int:
        return sum(n for outcome, n in self.total.items() if outcome not in (BREAKER_OPEN, FAILED))

    @property
    def failed(self) -> int:
        return self.total[BREAKER_OPEN] + self.total[FAILED]


async def _one_request(session: aiohttp.ClientSession, target: str, number: int,
                       tally: Tally) -> None:
    started = time.monotonic()
    try:
        # Host picks the destination in the proxy's routes, like Envoy's virtual hosts.
        async with session.get(f"http://{target}/reviews/{number % 1000}",
                               headers={"Host": "reviews"}) as response:
            body = await response.json(content_type=None) if response.status == 200 else None
            if response.status == 200 and isinstance(body, dict):
                outcome = str(body.get("version", FAILED))
            elif response.status == 503 and response.headers.get("x-sidecarlab-breaker") == "open":
                outcome = BREAKER_OPEN
            else:
                outcome = FAILED
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        outcome = FAILED
    tally.record(outcome, time.monotonic() - started)


async def drive(session: aiohttp.ClientSession, targets: Sequence[str], rps: float,
                tally: Tally, stop: asyncio.Event) -> None:
    """Send GET /reviews/N at `rps` per second, round-robin over `targets`, until `stop`."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    in_flight: set[asyncio.Task[None]] = set()
    next_at = loop.time()
    for number, target in zip(itertools.count(), itertools.cycle(targets)):
        if stop.is_set():
            break
        await slots.acquire()
        task = asyncio.create_task(_one_request(session, target, number, tally))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        task.add_done_callback(lambda _: slots.release())
        # A fixed schedule, not "sleep after each request": the rate stays the same however
        # slow the answers get. After a stall, start again from now rather than burst to catch up.
        next_at = max(next_at + 1.0 / rps, loop.time() - 1.0)
        delay = next_at - loop.time()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
    # Let the requests already sent finish: they count in the summary.
    if in_flight:
        await asyncio.wait(in_flight)
