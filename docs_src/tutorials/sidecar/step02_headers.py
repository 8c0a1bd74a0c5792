"""Sidecar, step 2: strip hop-by-hop header fields in both directions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from reference.hop_by_hop import strip_hop_by_hop

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one pooled ClientSession for the app's whole life."""
    # auto_decompress=False: a proxy passes the bytes on as they came.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        yield


async def forward(request: web.Request) -> web.StreamResponse:
    """Send the request to the upstream and stream its answer back."""
    url = URL(f"http://{request.app[UPSTREAM]}{request.raw_path}", encoded=True)
    try:
        upstream = await request.app[SESSION].request(
            request.method,
            url,
            # Connection, Keep-Alive, Transfer-Encoding... describe the client's connection
            # to us, not ours to the upstream, and neither do the fields Connection names.
            headers=strip_hop_by_hop(request.headers.items()),
            # The body streams through; it is never read whole into memory.
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        )
    except aiohttp.ClientError as error:
        return web.Response(status=502, text=f"upstream unreachable: {error}\n")
    async with upstream:
        headers = CIMultiDict(strip_hop_by_hop(upstream.headers.items()))
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_app(upstream: str = "127.0.0.1:9081") -> web.Application:
    """A proxy that forwards every method and path to `upstream` ("host:port")."""
    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=15001)
