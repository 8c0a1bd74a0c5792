"""The proxy config document: routes, clusters, breaker, timeouts, retries and body limit."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from reference.weighted_router import RouteConfigError, RouteTable

__all__ = [
    "BreakerSettings",
    "ProxyConfig",
    "ProxyConfigError",
    "RetrySettings",
    "parse_endpoint",
    "parse_proxy_config",
]

# Retries and attempts are counted like Istio's HTTPRetry.attempts: retries after the first try.
MAX_RETRY_ATTEMPTS = 10


class ProxyConfigError(ValueError):
    """A config document that cannot be served; the message starts with the field's path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BreakerSettings:
    """How each upstream's circuit breaker (one per cluster and subset) trips and recovers."""

    failure_threshold: int = 5
    recovery_timeout_seconds: float = 5.0
    half_open_max_calls: int = 1
    success_threshold: int = 1


@dataclass(frozen=True)
class RetrySettings:
    """Bounded retries: `attempts` retries after the first try, as Istio counts them."""

    attempts: int = 2
    per_try_timeout_seconds: float = 1.0
    backoff_base_seconds: float = 0.025
    backoff_max_seconds: float = 0.25


@dataclass(frozen=True)
class ProxyConfig:
    """One validated config document; immutable, so a proxy can share it between requests."""

    # The VirtualService spec, read-only all the way down; routes_spec() gives a plain copy.
    routes: Mapping[str, Any]
    # cluster (a host name) -> subset -> endpoints as "host:port", in the document's order.
    clusters: Mapping[str, Mapping[str, tuple[str, ...]]]
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    timeout_seconds: float = 2.0
    retries: RetrySettings = field(default_factory=RetrySettings)
    max_body_bytes: int = 1_048_576

    def subsets(self) -> dict[str, frozenset[str]]:
        """The subsets each cluster defines, in the shape RouteTable wants."""
        return {name: frozenset(subsets) for name, subsets in self.clusters.items()}

    def routes_spec(self) -> dict[str, Any]:
        """A plain, mutable copy of the routes, for RouteTable.from_dict / update."""
        return _thaw(self.routes)

    def to_dict(self) -> dict[str, Any]:
        """The document with every default filled in, as JSON-ready dicts and lists."""
        return {
            "routes": self.routes_spec(),
            "clusters": _thaw(self.clusters),
            "breaker": _thaw(self.breaker.__dict__),
            "timeout_seconds": self.timeout_seconds,
            "retries": _thaw(self.retries.__dict__),
            "max_body_bytes": self.max_body_bytes,
        }


# ---------------------------------------------------------------------------------------------
# Parsing. The document may come as plain JSON (dicts and lists) or frozen by ConfigStore
# (mappings and tuples), so sequences are accepted as either.

TOP_LEVEL = ("routes", "clusters", "breaker", "timeout_seconds", "retries", "max_body_bytes")


def _shown(value: Any) -> str:
    if isinstance(value, (str, int, float, bool, type(None))):
        return json.dumps(value)
    return type(value).__name__


def _fail(where: str, problem: str) -> ProxyConfigError:
    return ProxyConfigError(f"{where}: {problem}")


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(item) for item in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def _object(where: str, value: Any, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected an object, got {_shown(value)}")
    for key in value:
        # A misspelt optional key ("retry") would otherwise be ignored and its default used
        # silently; rejecting it makes the control plane answer the PUT with 400 instead.
        if key not in known:
            raise _fail(f"{where}.{key}" if where else str(key),
                        f"unknown field (known: {', '.join(known)})")
    return value


def _integer(where: str, value: Any, minimum: int) -> int:
    # bool is an int in Python, but `true` where a count belongs is a mistake, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, f"expected an integer, got {_shown(value)}")
    if value < minimum:
        raise _fail(where, f"must be at least {minimum}, got {value}")
    return value


def _seconds(where: str, value: Any, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(where, f"expected a number of seconds, got {_shown(value)}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "must not be negative" if allow_zero else "must be positive"
        raise _fail(where, f"{bound}, got {_shown(value)}")
    return seconds


def parse_endpoint(where: str, value: Any) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) into (host, port); raise ProxyConfigError if malformed."""
    if not isinstance(value, str):
        raise _fail(where, f"expected \"host:port\", got {_shown(value)}")
    host, colon, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise _fail(where, f"write an IPv6 address in brackets (\"[::1]:80\"), got {_shown(value)}")
    # isdigit() alone accepts "²" and other Unicode digits that int() then chokes on.
    if not colon or not host or not (port_text.isascii() and port_text.isdigit()):
        raise _fail(where, f"expected \"host:port\", got {_shown(value)}")
    if any(char.isspace() or char in "/?#@" for char in host):
        raise _fail(where, f"not a host name or address: {_shown(host)}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise _fail(where, f"port must be 1-65535, got {port}")
    return host, port


def _clusters(value: Any) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
    if not isinstance(value, Mapping) or not value:
        raise _fail("clusters", f"expected a non-empty object, got {_shown(value)}")
    clusters: dict[str, Mapping[str, tuple[str, ...]]] = {}
    for name, subsets in value.items():
        where = f"clusters.{name}"
        if not isinstance(name, str) or not name:
            raise _fail("clusters", "cluster names must be non-empty strings")
        if not isinstance(subsets, Mapping) or not subsets:
            raise _fail(where, f"expected a non-empty object of subsets, got {_shown(subsets)}")
        parsed: dict[str, tuple[str, ...]] = {}
        for subset, endpoints in subsets.items():
            at = f"{where}.{subset}"
            if not isinstance(subset, str) or not subset:
                raise _fail(where, "subset names must be non-empty strings")
            if not isinstance(endpoints, (list, tuple)) or not endpoints:
                raise _fail(at, f"expected a non-empty list of endpoints, got {_shown(endpoints)}")
            for i, endpoint in enumerate(endpoints):
                parse_endpoint(f"{at}[{i}]", endpoint)
            if len(set(endpoints)) != len(endpoints):
                # A repeated endpoint would silently get twice the share of the round-robin.
                raise _fail(at, "lists an endpoint more than once")
            parsed[subset] = tuple(endpoints)
        clusters[name] = MappingProxyType(parsed)
    return MappingProxyType(clusters)


def _routes(value: Any, clusters: Mapping[str, Mapping[str, tuple[str, ...]]]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail("routes", f"expected an object, got {_shown(value)}")
    spec = _thaw(value)
    subsets = {name: frozenset(sub) for name, sub in clusters.items()}
    try:
        # The route table's own validation: matches, weights summing to 100, and that every
        # subset a route names is defined (here: is a subset of that cluster).
        RouteTable.from_dict(spec, subsets)
    except RouteConfigError as error:
        raise _fail("routes", str(error)) from None
    # A destination without a subset is not checked by the table; it still needs a cluster.
    for i, rule in enumerate(spec["http"]):
        for j, entry in enumerate(rule["route"]):
            host = entry["destination"]["host"]
            if host not in clusters:
                raise _fail(
                    f"routes.http[{i}].route[{j}].destination.host",
                    f"no cluster named {_shown(host)} (known: {', '.join(sorted(clusters))})",
                )
    return _freeze(spec)


def _breaker(value: Any) -> BreakerSettings:
    known = tuple(BreakerSettings.__dataclass_fields__)
    spec = _object("breaker", value, known)
    defaults = BreakerSettings()
    return BreakerSettings(
        failure_threshold=_integer(
            "breaker.failure_threshold",
            spec.get("failure_threshold", defaults.failure_threshold), 1),
        recovery_timeout_seconds=_seconds(
            "breaker.recovery_timeout_seconds",
            spec.get("recovery_timeout_seconds", defaults.recovery_timeout_seconds),
            allow_zero=True),
        half_open_max_calls=_integer(
            "breaker.half_open_max_calls",
            spec.get("half_open_max_calls", defaults.half_open_max_calls), 1),
        success_threshold=_integer(
            "breaker.success_threshold",
            spec.get("success_threshold", defaults.success_threshold), 1),
    )


def _retries(value: Any) -> RetrySettings:
    known = tuple(RetrySettings.__dataclass_fields__)
    spec = _object("retries", value, known)
    defaults = RetrySettings()
    attempts = _integer("retries.attempts", spec.get("attempts", defaults.attempts), 0)
    if attempts > MAX_RETRY_ATTEMPTS:
        # Each retry multiplies the load on an upstream that is already failing.
        raise _fail("retries.attempts", f"at most {MAX_RETRY_ATTEMPTS}, got {attempts}")
    base = _seconds("retries.backoff_base_seconds",
                    spec.get("backoff_base_seconds", defaults.backoff_base_seconds))
    cap = _seconds("retries.backoff_max_seconds",
                   spec.get("backoff_max_seconds", defaults.backoff_max_seconds))
    if cap < base:
        raise _fail("retries.backoff_max_seconds",
                    f"must not be below backoff_base_seconds ({base:g}), got {cap:g}")
    return RetrySettings(
        attempts=attempts,
        per_try_timeout_seconds=_seconds(
            "retries.per_try_timeout_seconds",
            spec.get("per_try_timeout_seconds", defaults.per_try_timeout_seconds)),
        backoff_base_seconds=base,
        backoff_max_seconds=cap,
    )


# --8<-- [start:parse]
def parse_proxy_config(doc: Mapping[str, Any]) -> ProxyConfig:
    """Validate a config document and return it as a ProxyConfig; raise ProxyConfigError."""
    spec = _object("", doc, TOP_LEVEL) if isinstance(doc, Mapping) else None
    if spec is None:
        raise _fail("config", f"expected an object, got {_shown(doc)}")
    for required in ("routes", "clusters"):
        if required not in spec:
            raise _fail(required, "required field is missing")
    clusters = _clusters(spec["clusters"])
    defaults = ProxyConfig(routes={}, clusters={})
    return ProxyConfig(
        routes=_routes(spec["routes"], clusters),
        clusters=clusters,
        breaker=_breaker(spec.get("breaker", {})),
        timeout_seconds=_seconds("timeout_seconds",
                                 spec.get("timeout_seconds", defaults.timeout_seconds)),
        retries=_retries(spec.get("retries", {})),
        max_body_bytes=_integer("max_body_bytes",
                                spec.get("max_body_bytes", defaults.max_body_bytes), 0),
    )
# --8<-- [end:parse]
