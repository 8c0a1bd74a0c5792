"""A restarted node agent serves the apps of its last run on their old ports at once."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from reference.nodeagent.agent import NodeAgent
from reference.nodeagent.registrations import FILE_NAME, Registration, RegistrationStore
from tests.nodeagent.conftest import call, config_for, eventually, feed, settings_for


async def first_run(tmp_path: Path, reviews_address: str) -> int:
    """Register productpage-1 with a config, stop the agent; return the port it was given."""
    async with NodeAgent(settings_for(tmp_path)) as first:
        app = await first.registry.register("productpage-1", "productpage")
        await feed(first, "productpage", 7, config_for(reviews_address))
        return app.port


def refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def test_a_restarted_agent_serves_an_app_on_its_old_port_before_the_app_registers_again(
    tmp_path: Path, upstream, http
):
    reviews = await upstream("reviews-v1")
    port = await first_run(tmp_path, reviews.address)

    async with NodeAgent(settings_for(tmp_path)) as second:
        app = second.registry.get("productpage-1")

        assert app is not None and app.port == port
        assert app.config_version == 7  # from the disk cache, the control plane being down
        status, body = await call(http, app.address)
        assert status == 200 and body["upstream"] == "reviews-v1"


async def test_an_app_that_registers_again_keeps_its_port_and_outlives_the_grace(
    tmp_path: Path, upstream, http
):
    reviews = await upstream("reviews-v1")
    port = await first_run(tmp_path, reviews.address)

    async with NodeAgent(settings_for(tmp_path, restored_grace=0.3)) as second:
        again = await second.registry.register("productpage-1", "productpage")
        await eventually(lambda: second.registry._expiry.done())

        assert again.port == port
        assert second.registry.get("productpage-1") is again
        status, _ = await call(http, again.address)
        assert status == 200


async def test_an_app_that_does_not_register_again_within_the_grace_is_deregistered(
    tmp_path: Path, upstream, caplog: pytest.LogCaptureFixture
):
    reviews = await upstream("reviews-v1")
    port = await first_run(tmp_path, reviews.address)

    with caplog.at_level(logging.WARNING, logger="reference.nodeagent.registry"):
        async with NodeAgent(settings_for(tmp_path, restored_grace=0.2)) as second:
            await eventually(lambda: second.registry.get("productpage-1") is None)
            await eventually(lambda: refuses(port))  # its listener closes once it is idle
    assert "productpage-1 has not registered again" in caplog.text
    assert RegistrationStore(tmp_path / "cache").load() == []


async def test_a_deregistered_app_is_not_restored(tmp_path: Path):
    async with NodeAgent(settings_for(tmp_path)) as first:
        await first.registry.register("productpage-1", "productpage")
        await first.registry.register("ratings-1", "ratings")
        await first.registry.deregister("productpage-1")

    async with NodeAgent(settings_for(tmp_path)) as second:
        assert [app.app_id for app in second.registry.apps()] == ["ratings-1"]


async def test_an_old_port_another_process_took_is_given_up_and_the_app_gets_a_new_one(
    tmp_path: Path, upstream, caplog: pytest.LogCaptureFixture
):
    reviews = await upstream("reviews-v1")
    port = await first_run(tmp_path, reviews.address)

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with caplog.at_level(logging.WARNING, logger="reference.nodeagent.registry"):
            async with NodeAgent(settings_for(tmp_path)) as second:
                assert second.registry.get("productpage-1") is None
                app = await second.registry.register("productpage-1", "productpage")

                assert app.port != port
                assert RegistrationStore(tmp_path / "cache").load() == [
                    Registration("productpage-1", "productpage", app.port)]
    assert f"not restoring productpage-1 on port {port}" in caplog.text


async def test_a_restored_app_registering_for_another_service_is_moved_not_refused(
    tmp_path: Path, upstream
):
    reviews = await upstream("reviews-v1")
    await first_run(tmp_path, reviews.address)

    async with NodeAgent(settings_for(tmp_path)) as second:
        moved = await second.registry.register("productpage-1", "details")

        assert moved.service == "details"
        assert second.registry.services == frozenset({"details"})
        assert RegistrationStore(tmp_path / "cache").load() == [
            Registration("productpage-1", "details", moved.port)]


async def test_a_damaged_registrations_file_is_ignored_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / FILE_NAME).write_bytes(b"not a database, not at all" * 100)

    with caplog.at_level(logging.WARNING, logger="reference.nodeagent.registrations"):
        async with NodeAgent(settings_for(tmp_path)) as agent:
            assert agent.registry.apps() == []
            app = await agent.registry.register("productpage-1", "productpage")

    assert "ignoring app registrations" in caplog.text
    assert RegistrationStore(tmp_path / "cache").load() == [
        Registration("productpage-1", "productpage", app.port)]
    # Kept aside, not deleted: somebody may want to know what damaged it.
    assert (tmp_path / "cache" / f"{FILE_NAME}.damaged").read_bytes().startswith(b"not a database")


async def test_an_agent_without_a_cache_folder_restores_nothing_and_records_nothing(
    tmp_path: Path
):
    async with NodeAgent(settings_for(tmp_path, cache_dir=None)) as first:
        await first.registry.register("productpage-1", "productpage")
    async with NodeAgent(settings_for(tmp_path, cache_dir=None)) as second:
        assert second.registry.apps() == []
    assert not (tmp_path / "cache").exists()


async def test_a_cache_folder_that_cannot_be_made_does_not_stop_start_or_registration(tmp_path: Path):
    (tmp_path / "cache").write_text("a file where the folder should be")

    async with NodeAgent(settings_for(tmp_path)) as agent:
        app = await agent.registry.register("productpage-1", "productpage")
        assert agent.registry.apps() == [app]
