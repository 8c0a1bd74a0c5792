"""Sidecar, step 3: pick the upstream by weight, with the route table of a proxy config."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from reference.hop_by_hop import strip_hop_by_hop
from reference.proxy_config import parse_proxy_config
from reference.weighted_router import Destination, NoRouteError, RouteTable

SESSION = web.AppKey("session", aiohttp.ClientSession)


class Router:
    """The route table of one proxy config, and a round-robin over each subset's endpoints."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.table: RouteTable | None = None  # None: no config yet, answer 503
        self.endpoints: dict[Destination, Iterator[str]] = {}
        if config is not None:
            self.load(config)

    def load(self, document: Mapping[str, Any]) -> None:
        """Serve `document` from now on; raise ProxyConfigError and keep the old one if bad."""
        config = parse_proxy_config(document)
        table = RouteTable.from_dict(config.routes_spec(), config.subsets())
        endpoints = {}
        for host, subsets in config.clusters.items():
            for subset, addresses in subsets.items():
                endpoints[Destination(host, subset)] = itertools.cycle(addresses)
            # A route that names no subset may use every endpoint of the cluster.
            everything = [address for addresses in subsets.values() for address in addresses]
            endpoints[Destination(host)] = itertools.cycle(everything)
        self.endpoints = endpoints
        self.table = table


ROUTER = web.AppKey("router", Router)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one pooled ClientSession for the app's whole life."""
    # auto_decompress=False: a proxy passes the bytes on as they came.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        yield


async def forward(request: web.Request) -> web.StreamResponse:
    """Route the request by its Host and path, send it on and stream the answer back."""
    router = request.app[ROUTER]
    if router.table is None:
        return web.Response(status=503, text="no config yet\n")
    # Like Envoy's virtual hosts: the Host field, without its port, names the service.
    if request.host.partition(":")[0].lower() not in router.table.hosts:
        return web.Response(status=404, text=f"unknown host {request.host}\n")
    try:
        destination = router.table.route(request.path, request.headers)
    except NoRouteError as error:
        return web.Response(status=404, text=f"{error}\n")
    address = next(router.endpoints[destination])
    url = URL(f"http://{address}{request.raw_path}", encoded=True)
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


def create_app(config: Mapping[str, Any] | None = None) -> web.Application:
    """A proxy that routes by `config`, a proxy config document (503 until it has one)."""
    app = web.Application()
    app[ROUTER] = Router(config)
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        web.run_app(create_app(json.load(file)), host="127.0.0.1", port=15001)
