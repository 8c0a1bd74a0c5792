"""The node registry, driven by a fake clock: no sleeping."""

from __future__ import annotations

import pytest

from reference.controlplane.registry import NodeHealth, NodeRegistry

from .conftest import FakeClock


def test_a_node_goes_from_healthy_to_suspect_to_dead_as_its_heartbeat_ages(registry, clock):
    registry.heartbeat("node-a")
    assert registry.health("node-a") is NodeHealth.HEALTHY
    clock.advance(14.9)
    assert registry.health("node-a") is NodeHealth.HEALTHY
    clock.advance(0.1)  # exactly suspect_after
    assert registry.health("node-a") is NodeHealth.SUSPECT
    clock.advance(44.9)
    assert registry.health("node-a") is NodeHealth.SUSPECT
    clock.advance(0.1)  # exactly dead_after
    assert registry.health("node-a") is NodeHealth.DEAD


def test_a_heartbeat_brings_a_dead_node_back_to_healthy(registry, clock):
    registry.heartbeat("node-a")
    clock.advance(120)
    assert registry.health("node-a") is NodeHealth.DEAD
    view = registry.heartbeat("node-a")
    assert (view.health, view.last_heartbeat_age) == (NodeHealth.HEALTHY, 0)


def test_a_node_never_heard_from_has_no_health(registry):
    assert registry.health("node-x") is None
    assert registry.nodes() == []


def test_nodes_are_listed_by_id_with_what_they_said(registry, clock):
    facts = {"apps": "3"}
    registry.heartbeat("node-b", hostname="b", facts=facts, applied_versions={"reviews": 2})
    registry.heartbeat("node-a", hostname="a")
    facts["apps"] = "4"  # the registry kept a copy
    b = registry.nodes()[1]
    assert [n.node_id for n in registry.nodes()] == ["node-a", "node-b"]
    assert (b.hostname, b.facts, b.applied_versions) == ("b", {"apps": "3"}, {"reviews": 2})


def test_nodes_dead_for_longer_than_forget_after_are_dropped():
    clock = FakeClock()
    registry = NodeRegistry(suspect_after=1, dead_after=2, forget_after=10, clock=clock)
    registry.heartbeat("old")
    clock.advance(10)
    registry.heartbeat("new")
    assert [n.node_id for n in registry.nodes()] == ["new"]


def test_nodes_are_asked_to_beat_three_times_per_suspect_after(registry):
    assert registry.heartbeat_interval == 5.0


@pytest.mark.parametrize(
    ("suspect_after", "dead_after"), [(0, 10), (10, 10), (10, 5), (-1, 5)]
)
def test_timeouts_must_be_positive_and_in_order(suspect_after, dead_after):
    with pytest.raises(ValueError):
        NodeRegistry(suspect_after=suspect_after, dead_after=dead_after)
