"""What the proxy reports on its admin listener: config version and breaker states."""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import aiohttp

__all__ = ["BreakerHistory", "ProxyStatus", "read_status"]

# One sample of the Prometheus text format, e.g.
#   sidecarlab_breaker_state{proxy="outbound",upstream="reviews/v2",state="open"} 1
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


@dataclass(frozen=True)
class ProxyStatus:
    """One reading of /metrics: the config version and each (proxy, upstream)'s breaker state."""

    version: int | None = None
    breakers: dict[tuple[str, str], str] = field(default_factory=dict)
    reachable: bool = True

    def states_by_upstream(self) -> dict[str, Counter[str]]:
        """upstream -> how many proxies see its breaker in each state (one per app, or one)."""
        grouped: dict[str, Counter[str]] = defaultdict(Counter)
        for (_, upstream), state in sorted(self.breakers.items()):
            grouped[upstream][state] += 1
        return dict(grouped)


def parse_metrics(text: str) -> ProxyStatus:
    """The config version and breaker states in a sidecar's or node agent's /metrics."""
    version: int | None = None
    breakers: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None:
            continue  # a # HELP or # TYPE line
        labels = dict(LABEL.findall(match["labels"] or ""))
        if match["name"] == "sidecarlab_config_version":
            version = int(float(match["value"]))
        elif match["name"] == "sidecarlab_breaker_state" and float(match["value"]) == 1:
            # "reviews" alone is the whole cluster, used by a Host with no route; the demo's
            # traffic always has a route, so only the per-subset breakers are interesting.
            if "/" in labels.get("upstream", ""):
                breakers[(labels.get("proxy", ""), labels["upstream"])] = labels.get("state", "")
    return ProxyStatus(version, breakers)


async def read_status(session: aiohttp.ClientSession, admin_url: str) -> ProxyStatus:
    """GET {admin}/metrics and parse it; an unreachable admin listener is reported, not raised."""
    try:
        async with session.get(f"{admin_url}/metrics", timeout=ADMIN_TIMEOUT) as response:
            return parse_metrics(await response.text())
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return ProxyStatus(reachable=False)


@dataclass
class BreakerHistory:
    """The breaker state changes seen between readings, as (seconds, upstream, old, new, count)."""

    changes: list[tuple[float, str, str, str, int]] = field(default_factory=list)
    _last: dict[tuple[str, str], str] = field(default_factory=dict)

    def observe(self, elapsed: float, status: ProxyStatus) -> list[str]:
        """Record changes since the previous reading; return them as event lines."""
        moved: Counter[tuple[str, str, str]] = Counter()
        for key, state in status.breakers.items():
            old = self._last.get(key)
            if old is not None and old != state:
                moved[(key[1], old, state)] += 1
            self._last[key] = state
        events = []
        for (upstream, old, new), count in sorted(moved.items()):
            self.changes.append((elapsed, upstream, old, new, count))
            where = f" in {count} apps" if count > 1 else ""
            events.append(f"breaker {upstream}: {old} -> {new}{where}")
        return events

    def first_trip(self) -> tuple[float, str] | None:
        """(seconds, upstream) of the first breaker seen going from closed to open."""
        trips = [(t, name) for t, name, old, new, _ in self.changes
                 if old == "closed" and new == "open"]
        return trips[0] if trips else None

    def reopened(self, upstream: str) -> int:
        """How often a half-open trial failed and opened `upstream`'s breaker again."""
        return sum(count for _, name, old, new, count in self.changes
                   if name == upstream and old == "half_open" and new == "open")

    def closed_after(self, since: float, upstream: str) -> float | None:
        """When `upstream`'s breaker was last seen closing again after `since`, if it was."""
        times = [t for t, name, _, new, _ in self.changes
                 if name == upstream and new == "closed" and t >= since]
        return times[-1] if times else None
