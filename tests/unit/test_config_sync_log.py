"""ConfigSync logs each version it applies, with the line the node agent logs for the same event."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from reference.config_sync import ConfigStore, ConfigSync


async def serve_version(aiohttp_server, version: int):
    """A control plane that always answers `version` (a 304 once the client has it)."""

    async def config(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == str(version):
            return web.Response(status=304)
        return web.json_response({"version": version, "config": {}}, headers={"ETag": str(version)})

    app = web.Application()
    app.router.add_get("/v1/services/{service}/config", config)
    return await aiohttp_server(app)


def applied_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "reference.config_sync" and r.levelno == logging.INFO]


async def test_an_applied_version_is_logged_once_and_a_repeat_is_not(aiohttp_server, caplog):
    server = await serve_version(aiohttp_server, 3)
    async with aiohttp.ClientSession() as session:
        sync = ConfigSync(session, str(server.make_url("/")), "checkout", ConfigStore(), wait=0.01)
        with caplog.at_level(logging.INFO, logger="reference.config_sync"):
            assert (await sync.poll_once()).applied
            assert await sync.poll_once() is None  # 304: nothing new, nothing logged
    assert applied_lines(caplog) == ["config checkout v3 applied"]


async def test_a_stale_version_is_not_logged_as_applied(aiohttp_server, caplog):
    server = await serve_version(aiohttp_server, 2)
    store = ConfigStore()
    await store.offer(5, {})  # newer than what the control plane will send
    async with aiohttp.ClientSession() as session:
        sync = ConfigSync(session, str(server.make_url("/")), "checkout", store, wait=0.01)
        with caplog.at_level(logging.INFO, logger="reference.config_sync"):
            assert not (await sync.poll_once()).applied
    assert applied_lines(caplog) == []
