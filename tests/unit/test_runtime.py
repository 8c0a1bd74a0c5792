"""Choosing the helpers' event loop, and settling their memory after start-up."""

from __future__ import annotations

import asyncio
import gc

import pytest

from reference.runtime import GC_THRESHOLD, event_loop_factory, settle_memory


def test_auto_takes_uvloop_where_it_is_installed_and_asyncio_takes_the_standard_loop():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed for this Python")
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_an_unknown_event_loop_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, uvloop, asyncio"):
        event_loop_factory("trio")


def test_a_loop_from_the_factory_runs_a_coroutine():
    with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
        assert runner.run(asyncio.sleep(0, result="ran")) == "ran"


def test_settling_memory_freezes_start_up_objects_and_collects_young_ones_less_often():
    threshold = gc.get_threshold()
    try:
        settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
