"""Route requests like an Istio VirtualService: ordered matches, weighted splits, sticky hashing."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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

# Istio's rule for a single destination, and the total every split must add up to here.
FULL_WEIGHT = 100
URI_KINDS = ("exact", "prefix")
HEADER_KINDS = ("exact", "prefix", "regex")


class RouteConfigError(ValueError):
    """A route table that cannot be served; the message names the field and what is wrong."""


class NoRouteError(LookupError):
    """No rule matches the request; Envoy answers such a request with 404 and flag NR."""


class Destination(NamedTuple):
    """Where a request goes: a host and, optionally, one of its DestinationRule subsets."""

    host: str
    subset: str | None = None

    def __str__(self) -> str:
        return self.host if self.subset is None else f"{self.host}/{self.subset}"


# --8<-- [start:swrr]
class SmoothWeightedRoundRobin(Generic[T]):
    """nginx's smooth weighted round-robin: exact shares, spread out rather than in bursts."""

    def __init__(self, weighted: Iterable[tuple[T, int]]) -> None:
        given = list(weighted)
        if any(weight < 0 for _, weight in given):
            raise ValueError("weights must not be negative")
        pairs = [(item, weight) for item, weight in given if weight > 0]
        if not pairs:
            raise ValueError("at least one item needs a positive weight")
        # A zero-weight item is left out entirely: it could never win, and leaving it in
        # would only cost a comparison per pick.
        self._items = [item for item, _ in pairs]
        self._weights = [weight for _, weight in pairs]
        self._current = [0] * len(pairs)
        self._total = sum(self._weights)

    def pick(self) -> T:
        """Return the next item; every `total weight` picks give each item exactly its weight."""
        best = 0
        for i, weight in enumerate(self._weights):
            self._current[i] += weight
            # Strictly greater, so ties go to the earlier item, as in nginx.
            if self._current[i] > self._current[best]:
                best = i
        # The winner pays back a whole round, so the current weights sum to zero after every
        # pick; over any `total` consecutive picks each item wins exactly `weight` times.
        self._current[best] -= self._total
        return self._items[best]
# --8<-- [end:swrr]


# --8<-- [start:ring]
def stable_hash(text: str) -> int:
    """Return a 64-bit hash of `text` that is the same in every process and on every host."""
    # Python's hash() of a str is salted per process (PYTHONHASHSEED), so two sidecars, or
    # one sidecar after a restart, would place the same key on different destinations.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing(Generic[T]):
    """A consistent-hash ring: each item owns `weight * vnodes_per_weight` points on it."""

    # With route weights on a 100 scale the default gives a ring of 1000 points, close to
    # Envoy's default minimum ring size of 1024 entries.
    def __init__(self, weighted: Iterable[tuple[T, int]], *, vnodes_per_weight: int = 10) -> None:
        points: list[tuple[int, str, T]] = []
        for item, weight in weighted:
            if weight < 0:
                raise ValueError("weights must not be negative")
            # Points are named after the item (its str, which must be stable and unique),
            # not its position, so adding or removing an item leaves every other item's
            # points where they were: only keys that land on the newcomer's points move,
            # and they move to the newcomer.
            for vnode in range(weight * vnodes_per_weight):
                label = f"{item}#{vnode}"
                points.append((stable_hash(label), label, item))
        if not points:
            raise ValueError("at least one item needs a positive weight")
        points.sort(key=lambda point: point[:2])  # the label breaks (unlikely) hash ties
        self._hashes = [point[0] for point in points]
        self._owners = [point[2] for point in points]

    def pick(self, key: str) -> T:
        """Return the owner of the first point at or after the hash of `key`, wrapping around."""
        index = bisect.bisect_left(self._hashes, stable_hash(key))
        return self._owners[index % len(self._owners)]
# --8<-- [end:ring]


# ---------------------------------------------------------------------------------------------
# Parsing and validation. Every error names the path of the offending field, in the spelling
# of the spec itself (`http[1].route[0].weight`), so an operator can find it in the YAML.


@dataclass(frozen=True)
class _StringMatch:
    kind: str
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, text: str | None) -> bool:
        if text is None:
            return False
        if self.kind == "exact":
            return text == self.value
        if self.kind == "prefix":
            return text.startswith(self.value)
        # Envoy matches the whole value against the regex, not a substring of it.
        return self.pattern.fullmatch(text) is not None


@dataclass(frozen=True)
class _MatchRequest:
    uri: _StringMatch | None
    headers: tuple[tuple[str, _StringMatch], ...]

    def matches(self, path: str, headers: Mapping[str, str]) -> bool:
        # Every condition of one entry must hold (AND).
        if self.uri is not None and not self.uri.matches(path):
            return False
        return all(match.matches(headers.get(name)) for name, match in self.headers)


@dataclass(frozen=True)
class _Rule:
    key: tuple[str, str | int]  # the rule across updates: ("name", name) or ("index", i)
    name: str | None
    matches: tuple[_MatchRequest, ...]
    route: tuple[tuple[Destination, int], ...]
    hash_header: str | None

    def applies_to(self, path: str, headers: Mapping[str, str]) -> bool:
        # No match list matches everything; the entries of a match list are OR'ed.
        return not self.matches or any(m.matches(path, headers) for m in self.matches)


def _fail(where: str, problem: str) -> RouteConfigError:
    return RouteConfigError(f"{where}: {problem}")


def _shown(value: Any) -> str:
    """Show a value from the spec as it would appear in JSON, or name its type."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return json.dumps(value)
    return type(value).__name__


def _string_match(where: str, spec: Any, kinds: tuple[str, ...]) -> _StringMatch:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise _fail(where, f"expected exactly one of {', '.join(kinds)}")
    (kind, value), = spec.items()
    if kind not in kinds:
        raise _fail(where, f"unknown match kind {_shown(kind)} (supported: {', '.join(kinds)})")
    if not isinstance(value, str):
        raise _fail(f"{where}.{kind}", f"expected a string, got {_shown(value)}")
    if kind != "regex":
        return _StringMatch(kind, value)
    try:
        return _StringMatch(kind, value, re.compile(value))
    except re.error as error:
        raise _fail(f"{where}.regex", f"invalid regular expression: {error}") from None


def _match_request(where: str, spec: Any) -> _MatchRequest:
    if not isinstance(spec, Mapping):
        raise _fail(where, f"expected an object, got {_shown(spec)}")
    for condition in spec:
        # Ignoring a condition we cannot evaluate would widen the match silently, so an
        # unsupported one (method, queryParams...) is an error, not a no-op.
        if condition not in ("uri", "headers", "name"):
            raise _fail(
                where, f"unsupported condition {_shown(condition)} (supported: uri, headers)"
            )
    uri = _string_match(f"{where}.uri", spec["uri"], URI_KINDS) if "uri" in spec else None
    header_specs = spec.get("headers", {})
    if not isinstance(header_specs, Mapping):
        raise _fail(f"{where}.headers", f"expected an object, got {_shown(header_specs)}")
    headers = tuple(
        # Header names are case-insensitive (RFC 9110); values are compared as given.
        (name.lower(), _string_match(f"{where}.headers.{name}", match, HEADER_KINDS))
        for name, match in header_specs.items()
    )
    return _MatchRequest(uri, headers)


def _destination(where: str, spec: Any, subsets: Mapping[str, frozenset[str]]) -> Destination:
    if not isinstance(spec, Mapping):
        raise _fail(where, f"expected an object, got {_shown(spec)}")
    host = spec.get("host")
    if not isinstance(host, str) or not host:
        raise _fail(f"{where}.host", "expected a non-empty host name")
    subset = spec.get("subset")
    if subset is None:
        return Destination(host)
    if not isinstance(subset, str):
        raise _fail(f"{where}.subset", f"expected a string, got {_shown(subset)}")
    known = subsets.get(host, frozenset())
    if subset not in known:
        listed = ", ".join(sorted(known)) or "none defined"
        raise _fail(
            f"{where}.subset",
            f"unknown subset {_shown(subset)} for host {_shown(host)} (known: {listed})",
        )
    return Destination(host, subset)


def _route(
    where: str, spec: Any, subsets: Mapping[str, frozenset[str]]
) -> tuple[tuple[Destination, int], ...]:
    if not isinstance(spec, list) or not spec:
        raise _fail(where, "expected at least one destination, got an empty list")
    pairs: list[tuple[Destination, int]] = []
    for j, entry in enumerate(spec):
        at = f"{where}[{j}]"
        if not isinstance(entry, Mapping):
            raise _fail(at, f"expected an object, got {_shown(entry)}")
        destination = _destination(f"{at}.destination", entry.get("destination"), subsets)
        for k, (seen, _) in enumerate(pairs):
            if seen == destination:
                raise _fail(f"{at}.destination", f"{destination} is already listed at {where}[{k}]")
        weight = entry.get("weight")
        if weight is None:
            if len(spec) > 1:
                raise _fail(f"{at}.weight", "required when a route has more than one destination")
            weight = FULL_WEIGHT
        # bool is an int in Python, but `weight: true` in YAML is a mistake, not a 1.
        if not isinstance(weight, int) or isinstance(weight, bool):
            raise _fail(f"{at}.weight", f"expected an integer, got {_shown(weight)}")
        if weight < 0:
            raise _fail(f"{at}.weight", f"must not be negative, got {weight}")
        pairs.append((destination, weight))
    if len(pairs) == 1:
        # Istio sends all traffic to a lone destination whatever its weight says.
        return ((pairs[0][0], FULL_WEIGHT),)
    total = sum(weight for _, weight in pairs)
    if total != FULL_WEIGHT:
        raise _fail(where, f"weights sum to {total}, expected {FULL_WEIGHT}")
    return tuple(pairs)


def _hash_header(where: str, spec: Any) -> str:
    # The field names are those of Istio's DestinationRule
    # trafficPolicy.loadBalancer.consistentHash, here set per rule.
    if not isinstance(spec, Mapping):
        raise _fail(where, f"expected an object, got {_shown(spec)}")
    for key in spec:
        if key != "httpHeaderName":
            raise _fail(where, f"unsupported key {_shown(key)} (supported: httpHeaderName)")
    name = spec.get("httpHeaderName")
    if not isinstance(name, str) or not name:
        raise _fail(f"{where}.httpHeaderName", "expected a non-empty header name")
    return name.lower()


def _rules(spec: Any, subsets: Mapping[str, frozenset[str]]) -> tuple[_Rule, ...]:
    if not isinstance(spec, Mapping):
        raise _fail("spec", f"expected an object, got {_shown(spec)}")
    hosts = spec.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
        raise _fail("hosts", "expected a list of host names")
    http = spec.get("http")
    if not isinstance(http, list) or not http:
        raise _fail("http", "expected a non-empty list of rules")
    rules: list[_Rule] = []
    named: dict[str, int] = {}
    for i, rule in enumerate(http):
        where = f"http[{i}]"
        if not isinstance(rule, Mapping):
            raise _fail(where, f"expected an object, got {_shown(rule)}")
        # Keys this module does not act on (rewrite, timeout, retries...) belong to other
        # building blocks of the proxy and are left to them.
        name = rule.get("name")
        if name is not None:
            if not isinstance(name, str) or not name:
                raise _fail(f"{where}.name", "expected a non-empty string")
            if name in named:
                # Names carry a rule's balancer state across updates, so they must be unique.
                also = f"http[{named[name]}]"
                raise _fail(f"{where}.name", f"duplicate rule name {_shown(name)} (also {also})")
            named[name] = i
        match_specs = rule.get("match", [])
        if not isinstance(match_specs, list):
            raise _fail(f"{where}.match", f"expected a list, got {_shown(match_specs)}")
        matches = tuple(_match_request(f"{where}.match[{k}]", m) for k, m in enumerate(match_specs))
        route = _route(f"{where}.route", rule.get("route"), subsets)
        hashing = rule.get("consistentHash")
        hash_header = None if hashing is None else _hash_header(f"{where}.consistentHash", hashing)
        key = ("name", name) if name is not None else ("index", i)
        rules.append(_Rule(key, name, matches, route, hash_header))
    return tuple(rules)


class _Balancer:
    """The per-rule picking state: a round-robin, and a ring when the rule hashes on a header."""

    def __init__(self, rule: _Rule) -> None:
        self.route = rule.route
        self.round_robin = SmoothWeightedRoundRobin(rule.route)
        self.ring = HashRing(rule.route) if rule.hash_header else None

    def fits(self, rule: _Rule) -> bool:
        # The ring depends only on the split, so renaming the hash header keeps it.
        return self.route == rule.route and (self.ring is not None) == bool(rule.hash_header)


class RouteTable:
    """One VirtualService's HTTP rules, with their weighted and sticky destination picking."""

    def __init__(self, subsets: Mapping[str, Iterable[str]]) -> None:
        # The subsets each host's DestinationRule defines, e.g. {"reviews": {"v1", "v2"}}.
        self._subsets = {host: frozenset(names) for host, names in subsets.items()}
        self._rules: tuple[_Rule, ...] = ()
        self._balancers: dict[tuple[str, str | int], _Balancer] = {}
        self.hosts: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], subsets: Mapping[str, Iterable[str]]) -> RouteTable:
        """Build a table from a parsed VirtualService `spec`; raise RouteConfigError if invalid."""
        table = cls(subsets)
        table.update(spec)
        return table

    @classmethod
    def from_json(cls, text: str, subsets: Mapping[str, Iterable[str]]) -> RouteTable:
        """Build a table from JSON text (for YAML, parse it yourself and call from_dict)."""
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as error:
            raise _fail("spec", f"not valid JSON: {error}") from None
        return cls.from_dict(spec, subsets)

    # --8<-- [start:update]
    def update(self, spec: Mapping[str, Any]) -> None:
        """Replace the rules with those of `spec`, keeping the picking state of unchanged rules."""
        # Validate everything before touching anything: a bad push from the control plane
        # must leave the proxy serving the last good table, as Envoy does when it NACKs one.
        rules = _rules(spec, self._subsets)
        balancers: dict[tuple[str, str | int], _Balancer] = {}
        for rule in rules:
            kept = self._balancers.get(rule.key)
            # An unchanged split keeps its place in the round-robin cycle; resetting it on
            # every push would skew the split toward the first destinations whenever the
            # control plane pushes more often than once per cycle.
            if kept is not None and kept.fits(rule):
                balancers[rule.key] = kept
            else:
                balancers[rule.key] = _Balancer(rule)
        self._rules, self._balancers = rules, balancers
        self.hosts = tuple(spec.get("hosts", ()))
    # --8<-- [end:update]

    def weights(self, rule: str | int) -> dict[Destination, int]:
        """Return the split of a rule, found by name or by position; raise KeyError if absent."""
        if isinstance(rule, int):
            if not 0 <= rule < len(self._rules):
                raise KeyError(rule)
            found = self._rules[rule]
        else:
            found = next((r for r in self._rules if r.name == rule), None)
            if found is None:
                raise KeyError(rule)
        return dict(found.route)

    # --8<-- [start:route]
    def route(self, path: str, headers: Mapping[str, str] | None = None) -> Destination:
        """Return the destination for a request; raise NoRouteError if no rule matches."""
        # Envoy matches an exact path without its query string; dropping the query for
        # prefixes too means a prefix containing "?" never matches, which no route needs.
        path = path.partition("?")[0]
        lowered: dict[str, str] = {}
        for name, value in (headers or {}).items():
            lowered.setdefault(name.lower(), value)
        for rule in self._rules:  # in order: the first rule that matches wins
            if rule.applies_to(path, lowered):
                balancer = self._balancers[rule.key]
                key = lowered.get(rule.hash_header) if rule.hash_header else None
                if balancer.ring is not None and key is not None:
                    return balancer.ring.pick(key)
                # Without the hash header there is nothing to stick to; Envoy's ring hash
                # picks at random then, and the round-robin gives the same split, evenly.
                return balancer.round_robin.pick()
        raise NoRouteError(f"no rule matches path {path!r}")
    # --8<-- [end:route]
