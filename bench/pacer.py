"""An open-loop client: requests on a fixed timetable, spread round-robin over several targets.

Where wrk (closed loop) waits for each answer before sending again, this client sends request
k at start + k / rate whatever happened before, and measures each latency from that scheduled
moment. A stalled helper therefore shows up as slow requests instead of as fewer requests
(no coordinated omission). It is one asyncio process for every target, so its own cost stays
the same whether it drives 1 app's helper or 50.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Target:
    """Where one app sends its outbound calls, and the Host header that names the service."""

    port: int
    host: str


@dataclass(frozen=True)
class Sample:
    """One request: which target, when it was due (s after the start), what came of it."""

    target: int  # index into the targets list
    due: float
    status: int  # the HTTP status; 0 when no answer came (refused, reset, timed out)
    latency_ms: float  # from `due` until the answer (or the failure)

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class PacedResult:
    """What one paced run did: requests scheduled, answered, failed, latencies in ms."""

    scheduled: int
    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    # Every request in schedule order, for per-target or over-time views (blast radius, noise).
    samples: tuple[Sample, ...] = ()

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


async def paced_load(targets: list[Target], *, rate: float, seconds: float, timeout: float = 2.0,
                     start_at: float | None = None, stop: threading.Event | None = None) -> PacedResult:
    """Send round(rate * seconds) GETs at `rate` per second in total, target k % len(targets).

    `start_at` is the time.perf_counter() moment request 0 is due (default: now), so a caller
    in another thread can time a fault against the samples' due times. `targets[i]` is read
    when each request is sent, so a sequence whose items change (an app that re-registers and
    gets a new port) is followed mid-run. Once `stop` is set, no further request is sent (those
    in flight finish), so `seconds` becomes an upper bound for a caller that knows when it has
    seen enough.
    """
    count = max(1, round(rate * seconds))
    latencies: list[float] = []
    errors = 0
    samples: list[Sample | None] = [None] * count
    # No connection limit: an open-loop client must not queue behind a slow answer. Each
    # target keeps its keep-alive connections, as an app calling through its helper would.
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(k: int, target: Target, due: float) -> None:
            nonlocal errors
            status = 0
            try:
                async with session.get(f"http://127.0.0.1:{target.port}/", headers={"Host": target.host}) as answer:
                    await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            latency = (time.perf_counter() - due) * 1000
            samples[k] = Sample(k % len(targets), round(due - start, 6), status, latency)
            if status != 200:
                errors += 1
                return
            latencies.append(latency)

        start = time.perf_counter() if start_at is None else start_at
        tasks = []
        for k in range(count):
            if stop is not None and stop.is_set():
                break
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, targets[k % len(targets)], due)))
        await asyncio.gather(*tasks)
        # The rate is over the schedule's length, not the time the last answer took to come.
        elapsed = max(seconds, count / rate) if len(tasks) == count else len(tasks) / rate
    latencies.sort()
    return PacedResult(
        scheduled=len(tasks), ok=len(latencies), errors=errors, seconds=elapsed,
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else 0.0,
        samples=tuple(sample for sample in samples if sample is not None),
    )


def run_paced(targets: list[Target], *, rate: float, seconds: float, timeout: float = 2.0,
              start_at: float | None = None, stop: threading.Event | None = None) -> PacedResult:
    """paced_load for synchronous callers (run it in a thread to act on the system meanwhile)."""
    return asyncio.run(paced_load(targets, rate=rate, seconds=seconds, timeout=timeout, start_at=start_at,
                                  stop=stop))
