"""Route requests like an Istio VirtualService: ordered matches, weighted splits, sticky hashing.

Exercise 02. Fill in the methods step by step (see README.md), then run:

    pytest exercises/02_weighted_routing

Use only the standard library (hashlib, json, re, bisect...). Helper functions and classes of
your own are welcome; the tests only use the public names below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = [
    "Destination",
    "HashRing",
    "NoRouteError",
    "RouteConfigError",
    "RouteTable",
    "SmoothWeightedRoundRobin",
]

T = TypeVar("T")


class RouteConfigError(ValueError):
    """A route table that cannot be served; the message names the field and what is wrong.

    The message starts with the path of the offending field in the spec's own spelling, a
    colon and a space, then the problem, e.g. `http[1].route: weights sum to 90, expected 100`.
    """


class NoRouteError(LookupError):
    """No rule matches the request; Envoy answers such a request with 404 and flag NR."""


class Destination(NamedTuple):
    """Where a request goes: a host and, optionally, one of its DestinationRule subsets."""

    host: str
    subset: str | None = None

    def __str__(self) -> str:
        return self.host if self.subset is None else f"{self.host}/{self.subset}"


class SmoothWeightedRoundRobin(Generic[T]):
    """nginx's smooth weighted round-robin: exact shares, spread out rather than in bursts."""

    def __init__(self, weighted: Iterable[tuple[T, int]]) -> None:
        """Keep `(item, weight)` pairs in order, each with a current weight starting at 0.

        Raise ValueError for a negative weight or when no weight is positive. An item of
        weight 0 must never be picked.
        """
        # TODO(step 3): store the items, their weights, current weights and the total.
        raise NotImplementedError("SmoothWeightedRoundRobin.__init__")

    def pick(self) -> T:
        """Return the next item; every `total weight` picks give each item exactly its weight.

        Each pick: add every item's weight to its current weight, choose the item with the
        largest current weight (the earliest one on a tie), subtract the total weight from
        the chosen item's current weight. Weights 5, 1, 1 give a a b a c a a.
        """
        # TODO(step 3)
        raise NotImplementedError("SmoothWeightedRoundRobin.pick")


class HashRing(Generic[T]):
    """A consistent-hash ring: each item owns `weight * vnodes_per_weight` points on it."""

    def __init__(self, weighted: Iterable[tuple[T, int]], *, vnodes_per_weight: int = 10) -> None:
        """Place `weight * vnodes_per_weight` points per item, at stable hashes of `str(item)`.

        Name each point after the item (say `f"{item}#{n}"`), never after its position, and
        hash with hashlib (Python's hash() of a str changes from process to process). Raise
        ValueError for a negative weight or when no weight is positive.
        """
        # TODO(step 5)
        raise NotImplementedError("HashRing.__init__")

    def pick(self, key: str) -> T:
        """Return the owner of the first point at or after the hash of `key`, wrapping around."""
        # TODO(step 5)
        raise NotImplementedError("HashRing.pick")


class RouteTable:
    """One VirtualService's HTTP rules, with their weighted and sticky destination picking."""

    def __init__(self, subsets: Mapping[str, Iterable[str]]) -> None:
        # The subsets each host's DestinationRule defines, e.g. {"reviews": {"v1", "v2"}}.
        self._subsets = {host: frozenset(names) for host, names in subsets.items()}
        self.hosts: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], subsets: Mapping[str, Iterable[str]]) -> RouteTable:
        """Build a table from a parsed VirtualService `spec`; raise RouteConfigError if invalid."""
        # TODO(step 1): make a table for `subsets`, then load `spec` into it with update().
        raise NotImplementedError("RouteTable.from_dict")

    @classmethod
    def from_json(cls, text: str, subsets: Mapping[str, Iterable[str]]) -> RouteTable:
        """Build a table from JSON text; raise RouteConfigError if it is not JSON or invalid.

        YAML users parse their YAML into a dict and call from_dict.
        """
        # TODO(step 1)
        raise NotImplementedError("RouteTable.from_json")

    def update(self, spec: Mapping[str, Any]) -> None:
        """Replace the rules with those of `spec`, keeping the picking state of unchanged rules.

        Validate the whole spec first: on RouteConfigError nothing changes. A rule is the
        same rule across updates when it has the same name (or, unnamed, the same position);
        if its destinations and weights are also unchanged, it keeps its round-robin state.
        """
        # TODO(step 1): parse and validate `spec`, then install its rules.
        # TODO(step 4): keep the balancer of each rule whose split did not change.
        raise NotImplementedError("RouteTable.update")

    def weights(self, rule: str | int) -> dict[Destination, int]:
        """Return the split of a rule, found by name or by position; raise KeyError if absent."""
        # TODO(step 1)
        raise NotImplementedError("RouteTable.weights")

    def route(self, path: str, headers: Mapping[str, str] | None = None) -> Destination:
        """Return the destination for a request; raise NoRouteError if no rule matches.

        Rules are tried in order and the first that matches wins. A rule with consistentHash
        sends requests carrying its header to `ring.pick(header value)`; every other request
        goes to the rule's next round-robin pick.
        """
        # TODO(step 2): find the first matching rule; return its first destination for now.
        # TODO(step 3): pick with the rule's SmoothWeightedRoundRobin instead.
        # TODO(step 5): pick with the rule's HashRing when the request has the hash header.
        raise NotImplementedError("RouteTable.route")
