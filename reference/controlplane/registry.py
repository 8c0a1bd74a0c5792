"""The node registry: which node agents are alive, judged by the age of their last heartbeat."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["NodeHealth", "NodeRegistry", "NodeView"]


class NodeHealth(enum.Enum):
    """How alive a node looks from here."""

    HEALTHY = "healthy"  # heard from within suspect_after
    SUSPECT = "suspect"  # missed a few heartbeats: maybe a slow network, maybe going down
    DEAD = "dead"  # silent for dead_after: treat its reports as stale


@dataclass(frozen=True)
class _Node:
    node_id: str
    hostname: str
    facts: Mapping[str, str]
    applied_versions: Mapping[str, int]
    last_heartbeat: float


@dataclass(frozen=True)
class NodeView:
    """A node as the registry sees it at one moment."""

    node_id: str
    hostname: str
    health: NodeHealth
    last_heartbeat_age: float  # seconds
    facts: Mapping[str, str] = field(default_factory=dict)
    applied_versions: Mapping[str, int] = field(default_factory=dict)


class NodeRegistry:
    """Node agents heartbeat in; each is healthy, suspect or dead by its last heartbeat's age."""

    # The shape of Kubernetes' node lifecycle controller: nodes renew a lease, and a node
    # whose lease is older than a grace period is marked unknown, then evicted later.
    def __init__(
        self,
        *,
        suspect_after: float = 15.0,
        dead_after: float = 60.0,
        forget_after: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < suspect_after < dead_after <= forget_after:
            raise ValueError(
                "need 0 < suspect_after < dead_after <= forget_after, got "
                f"{suspect_after}, {dead_after}, {forget_after}"
            )
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self.forget_after = forget_after
        self._clock = clock
        self._nodes: dict[str, _Node] = {}

    @property
    def heartbeat_interval(self) -> float:
        """How often nodes should beat: a third of suspect_after, so one lost beat is no alarm."""
        return self.suspect_after / 3

    def heartbeat(
        self,
        node_id: str,
        *,
        hostname: str = "",
        facts: Mapping[str, str] | None = None,
        applied_versions: Mapping[str, int] | None = None,
    ) -> NodeView:
        """Record that `node_id` is alive now, with what it says about itself."""
        now = self._clock()
        if node_id not in self._nodes:
            # Only a new node grows the registry, so that is when to drop the long dead.
            self._forget_long_dead(now)
        node = _Node(
            node_id=node_id,
            hostname=hostname,
            # Copies: the caller's dicts (protobuf maps, say) must not change what we show.
            facts=MappingProxyType(dict(facts or {})),
            applied_versions=MappingProxyType(dict(applied_versions or {})),
            last_heartbeat=now,
        )
        self._nodes[node_id] = node
        return self._view(node, now)

    def health(self, node_id: str) -> NodeHealth | None:
        """The node's health now, or None for a node never heard from (or long forgotten)."""
        node = self._nodes.get(node_id)
        return None if node is None else self._health(self._clock() - node.last_heartbeat)

    def nodes(self) -> list[NodeView]:
        """Every known node, sorted by id, with its health computed now."""
        now = self._clock()
        self._forget_long_dead(now)
        return [self._view(self._nodes[node_id], now) for node_id in sorted(self._nodes)]

    def _health(self, age: float) -> NodeHealth:
        # Computed from the age on every read rather than stored: no timer to run, and a
        # fake clock in tests moves every node through the states without sleeping.
        if age < self.suspect_after:
            return NodeHealth.HEALTHY
        if age < self.dead_after:
            return NodeHealth.SUSPECT
        return NodeHealth.DEAD

    def _view(self, node: _Node, now: float) -> NodeView:
        age = now - node.last_heartbeat
        return NodeView(
            node.node_id, node.hostname, self._health(age), age, node.facts, node.applied_versions
        )

    def _forget_long_dead(self, now: float) -> None:
        # Nodes come and go with autoscaling; without this the registry would grow forever.
        gone = [
            node_id for node_id, node in self._nodes.items()
            if now - node.last_heartbeat >= self.forget_after
        ]
        for node_id in gone:
            del self._nodes[node_id]
