"""The Prometheus registry: get-or-create metrics, scrape-time sources, text format 0.0.4."""

from __future__ import annotations

import pytest

from reference.metrics import Registry


def test_counters_and_gauges_render_with_help_type_and_escaped_labels():
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests.\nAll of them.", ("path",))
    requests.labels('/a"b\\c').inc()
    requests.labels('/a"b\\c').inc(2)
    registry.gauge("app_up", "1 when up.").set(1)
    assert registry.render() == (
        "# HELP app_requests_total Requests.\\nAll of them.\n"
        "# TYPE app_requests_total counter\n"
        'app_requests_total{path="/a\\"b\\\\c"} 3\n'
        "# HELP app_up 1 when up.\n"
        "# TYPE app_up gauge\n"
        "app_up 1\n"
    )


def test_histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count():
    registry = Registry()
    latency = registry.histogram("op_seconds", "Op time.", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value)
    lines = registry.render().splitlines()
    assert lines[2:] == [
        'op_seconds_bucket{le="0.1"} 2',  # bounds are inclusive, as Prometheus's `le` says
        'op_seconds_bucket{le="1.0"} 3',
        'op_seconds_bucket{le="+Inf"} 4',
        "op_seconds_sum 3.65",
        "op_seconds_count 4",
    ]


def test_tracked_sources_are_read_at_render_time_and_can_be_removed():
    registry = Registry()
    counter = registry.counter("proxy_requests_total", "Requests.", ("proxy",))
    state = {"n": 1}
    untrack = counter.track(lambda: {("a",): state["n"]})
    counter.track(lambda: {("b",): 5})
    state["n"] = 4
    assert 'proxy_requests_total{proxy="a"} 4' in registry.render()
    untrack()
    rendered = registry.render()
    assert 'proxy="a"' not in rendered and 'proxy_requests_total{proxy="b"} 5' in rendered


def test_asking_twice_returns_the_same_metric_and_a_clash_is_an_error():
    registry = Registry()
    assert registry.counter("x_total", "X.", ("a",)) is registry.counter("x_total", "X.", ("a",))
    with pytest.raises(ValueError):
        registry.gauge("x_total", "X.", ("a",))
    with pytest.raises(ValueError):
        registry.counter("x_total", "X.", ("b",))


def test_invalid_names_wrong_label_counts_and_decreasing_counters_are_refused():
    registry = Registry()
    with pytest.raises(ValueError):
        registry.counter("9lives", "Bad name.")
    with pytest.raises(ValueError):
        registry.histogram("h", "Reserved label.", ("le",))
    counter = registry.counter("c_total", "C.", ("a",))
    with pytest.raises(ValueError):
        counter.labels("1", "2")
    with pytest.raises(ValueError):
        counter.labels("1").inc(-1)


def test_an_empty_registry_renders_nothing():
    assert Registry().render() == ""
