"""The disk cache: start with the control plane down and serve the last good config."""

from __future__ import annotations

from pathlib import Path

from reference.config_sync import Snapshot, save_cache
from reference.nodeagent.agent import NodeAgent
from reference.nodeagent.cache import ServiceCache
from tests.nodeagent.conftest import call, config_for, eventually, feed, settings_for


async def test_an_agent_started_with_the_control_plane_down_serves_the_cached_config(
    tmp_path: Path, upstream, http
):
    reviews = await upstream("reviews-v1")
    async with NodeAgent(settings_for(tmp_path)) as first:
        await first.registry.register("productpage-1", "productpage")
        await feed(first, "productpage", 7, config_for(reviews.address))

    # A new process (a restart, a new node image): same cache folder, control plane still down.
    async with NodeAgent(settings_for(tmp_path)) as second:
        app = await second.registry.register("productpage-1", "productpage")

        assert app.config_version == 7
        status, body = await call(http, app.address)
        assert status == 200 and body["upstream"] == "reviews-v1"
        assert second.watch.connected is False


async def test_a_cached_version_newer_updates_replace_and_older_ones_cannot(
    tmp_path: Path, upstream
):
    reviews = await upstream("reviews-v1")
    cache = ServiceCache(tmp_path / "cache")
    await cache.save("productpage", Snapshot(3, config_for(reviews.address)))
    async with NodeAgent(settings_for(tmp_path)) as agent:
        app = await agent.registry.register("productpage-1", "productpage")

        stale = await feed(agent, "productpage", 2, config_for("127.0.0.1:9"))
        newer = await feed(agent, "productpage", 4, config_for(reviews.address))

        assert stale.accepted and newer.accepted
        await eventually(lambda: app.config_version == 4)
        assert (await cache.load("productpage")).version == 4


async def test_a_corrupt_or_invalid_cache_file_is_ignored_not_fatal(tmp_path: Path):
    cache = ServiceCache(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    cache.path_for("productpage").write_text("{half a docu")
    save_cache(cache.path_for("ratings"), Snapshot(5, {"routes": {}}))  # fails validation

    async with NodeAgent(settings_for(tmp_path)) as agent:
        page = await agent.registry.register("productpage-1", "productpage")
        ratings = await agent.registry.register("ratings-1", "ratings")

        assert (page.config_version, ratings.config_version) == (0, 0)
        assert agent.config_view()["services"]["ratings"]["rejected"]["version"] == 5


def test_cache_file_names_stay_inside_the_cache_folder(tmp_path: Path):
    cache = ServiceCache(tmp_path)
    for name in ("../escape", "a/b", "..", ".", ".hidden"):
        assert cache.path_for(name).parent == tmp_path, name
