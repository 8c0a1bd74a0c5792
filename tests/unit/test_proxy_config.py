"""The proxy config document: defaults, and errors that name the field at fault."""

from __future__ import annotations

import copy

import pytest

from reference.config_sync import Snapshot
from reference.proxy_config import (
    BreakerSettings,
    ProxyConfigError,
    RetrySettings,
    parse_endpoint,
    parse_proxy_config,
)

MINIMAL = {
    "routes": {"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10},
    ]}]},
    "clusters": {"reviews": {"v1": ["127.0.0.1:9081"], "v2": ["127.0.0.1:9082", "[::1]:9083"]}},
}


def with_change(path: str, value) -> dict:
    """MINIMAL with the field at dotted `path` set to `value` (or removed when value is ...)."""
    doc = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target.setdefault(key, {})
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return doc


def test_only_routes_and_clusters_are_required_and_the_rest_has_defaults():
    config = parse_proxy_config(MINIMAL)
    assert config.breaker == BreakerSettings(5, 5.0, 1, 1)
    assert config.retries == RetrySettings(2, 1.0, 0.025, 0.25)
    assert (config.timeout_seconds, config.max_body_bytes) == (2.0, 1_048_576)
    assert config.clusters["reviews"]["v2"] == ("127.0.0.1:9082", "[::1]:9083")
    assert config.subsets() == {"reviews": frozenset({"v1", "v2"})}


def test_a_config_frozen_by_the_config_store_parses_to_the_same_result():
    assert parse_proxy_config(Snapshot(1, MINIMAL).config) == parse_proxy_config(MINIMAL)


def test_to_dict_round_trips_with_defaults_filled_in():
    document = parse_proxy_config(MINIMAL).to_dict()
    assert document["retries"]["attempts"] == 2
    assert parse_proxy_config(document) == parse_proxy_config(MINIMAL)


def test_the_parsed_config_cannot_be_changed():
    config = parse_proxy_config(MINIMAL)
    with pytest.raises(TypeError):
        config.clusters["reviews"]["v3"] = ("127.0.0.1:1",)  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.max_body_bytes = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("routes", ..., "routes: required field is missing"),
        ("clusters", ..., "clusters: required field is missing"),
        ("clusters", {}, "clusters: expected a non-empty object"),
        ("clusters.reviews.v1", [], "clusters.reviews.v1: expected a non-empty list of endpoints"),
        ("clusters.reviews.v1", ["localhost"], 'clusters.reviews.v1[0]: expected "host:port"'),
        ("clusters.reviews.v1", ["a:70000"], "clusters.reviews.v1[0]: port must be 1-65535"),
        ("clusters.reviews.v1", ["::1:80"], "clusters.reviews.v1[0]: write an IPv6 address"),
        ("clusters.reviews.v1", ["a:1", "a:1"], "clusters.reviews.v1: lists an endpoint more than once"),
        ("clusters.reviews", {"v1": ["a:1"]}, 'routes: http[0].route[1].destination.subset: unknown subset "v2"'),
        ("routes.http", [], "routes: http: expected a non-empty list of rules"),
        ("breaker.failure_threshold", 0, "breaker.failure_threshold: must be at least 1"),
        ("breaker.failure_threshold", True, "breaker.failure_threshold: expected an integer, got true"),
        ("breaker.recovery_timeout_seconds", -1, "breaker.recovery_timeout_seconds: must not be negative"),
        ("breaker.threshold", 3, "breaker.threshold: unknown field"),
        ("timeout_seconds", 0, "timeout_seconds: must be positive"),
        ("timeout_seconds", "2s", 'timeout_seconds: expected a number of seconds, got "2s"'),
        ("retries.attempts", 11, "retries.attempts: at most 10"),
        ("retries.backoff_max_seconds", 0.001, "retries.backoff_max_seconds: must not be below"),
        ("retries.per_try_timeout_seconds", float("nan"), "retries.per_try_timeout_seconds: must be positive"),
        ("max_body_bytes", -1, "max_body_bytes: must be at least 0"),
        ("retry", {}, "retry: unknown field"),
    ],
)
def test_errors_name_the_field_path(path, value, message):
    with pytest.raises(ProxyConfigError) as error:
        parse_proxy_config(with_change(path, value))
    assert str(error.value).startswith(message), str(error.value)


def test_a_destination_without_subset_still_needs_a_cluster():
    doc = with_change("routes.http", [{"route": [{"destination": {"host": "ratings"}}]}])
    with pytest.raises(ProxyConfigError, match=r"routes.http\[0\].route\[0\].destination.host: "
                                               r'no cluster named "ratings"'):
        parse_proxy_config(doc)


def test_a_document_that_is_not_an_object_is_refused():
    with pytest.raises(ProxyConfigError, match="config: expected an object, got list"):
        parse_proxy_config([])  # type: ignore[arg-type]


def test_endpoints_split_into_host_and_port():
    assert parse_endpoint("x", "reviews-v1.default.svc:9080") == ("reviews-v1.default.svc", 9080)
    assert parse_endpoint("x", "[::1]:80") == ("::1", 80)
    with pytest.raises(ProxyConfigError):
        parse_endpoint("x", "host:8x")
