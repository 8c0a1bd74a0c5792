"""The fast lane's header hygiene on bytes agrees with the slow lane's on parsed fields."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpRequestParser, HttpResponseParser

from reference import proxy
from reference.http_listener import ProxyRequest
from reference.proxy import (
    _REQUEST_DROPPED_RAW,
    _RESPONSE_DROPPED_RAW,
    raw_end_to_end,
    request_headers,
    response_headers,
)


def parse_request(data: bytes) -> Any:
    """The message aiohttp's server-side parser makes of `data`, as the listener gets it."""
    loop = asyncio.get_running_loop()
    parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16,
                               payload_exception=web.HTTPBadRequest, auto_decompress=False)
    messages, _, _ = parser.feed_data(data)
    return messages[0][0]


def parse_response(data: bytes) -> Any:
    """The message aiohttp's client-side parser makes of `data`, as the upstream pool gets it."""
    loop = asyncio.get_running_loop()
    parser = HttpResponseParser(BaseProtocol(loop), loop, 2**16, response_with_body=True,
                                read_until_eof=True, auto_decompress=False)
    messages, _, _ = parser.feed_data(data)
    return messages[0][0]


def as_request(message: Any) -> ProxyRequest:
    conn = SimpleNamespace(remote="10.0.0.7", transport=None, _loop=asyncio.get_running_loop())
    return ProxyRequest(message, None, conn)  # type: ignore[arg-type]


def lines(fields: bytes) -> list[tuple[str, str]]:
    # Decoded as the listener's parser decodes field values, so non-ASCII bytes compare equal.
    # Names are compared lower-cased: the parser spells known names its own way in `headers`
    # ("host" becomes "Host"), the bytes keep the sender's spelling, and both mean the same.
    assert fields.endswith(b"\r\n")
    text = fields.decode("utf-8", "surrogateescape")
    pairs = []
    for line in text[:-2].split("\r\n"):
        name, separator, value = line.partition(": ")
        assert separator, f"not a field line: {line!r}"
        pairs.append((name.lower(), value))
    return pairs


def lowered(pairs: Any) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in pairs]


@pytest.fixture(autouse=True)
def empty_caches(monkeypatch):
    # Each test starts from empty caches, so a hit is one this test made.
    monkeypatch.setitem(proxy._RAW_FIELDS, _REQUEST_DROPPED_RAW, {})
    monkeypatch.setitem(proxy._RAW_FIELDS, _RESPONSE_DROPPED_RAW, {})


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: reviews\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    b"Accept: */*\r\nUser-Agent: curl/8\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: reviews\r\nCONNECTION: Close\r\nTE: trailers\r\n"
    b"Proxy-Connection: keep-alive\r\nX-Request-Id: 42\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: reviews\r\nExpect: 100-continue\r\nX-A: 1\r\n\r\n",
    # Repeated fields keep their order and their separate lines; a Via already there stays.
    b"GET / HTTP/1.1\r\nHost: reviews\r\nX-Tag: one\r\nVia: 1.1 edge\r\nX-Tag: two\r\n"
    b"Cookie: a=1\r\nCookie: b=2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: reviews\r\nX-Empty:\r\nX-Padded:   spaced out  \r\n"
    b"X-Latin: caf\xe9\r\nUpgrade: h2c\r\n\r\n",
    b"GET /old HTTP/1.0\r\nHost: reviews\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: reviews\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
    b"DELETE /items/1 HTTP/1.1\r\nHost: reviews\r\nAuthorization: Bearer t\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\nKeep-Alive: timeout=75\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    b"\r\nok",
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: /b\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    b"Via: 1.1 upstream-proxy\r\nContent-Length: 0\r\n\r\n",
    # Expect means nothing in a response, so it is not one of the fields a response drops.
    b"HTTP/1.1 204 No Content\r\nExpect: odd\r\nX-Empty:\r\nX-Latin: caf\xe9\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nServer: old\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("data", REQUESTS)
async def test_a_request_gets_the_same_fields_on_both_lanes(data):
    message = parse_request(data)
    fields = raw_end_to_end(message.headers, message.raw_headers, _REQUEST_DROPPED_RAW,
                            message.version)
    assert fields is not None
    assert lines(fields) == lowered(request_headers(as_request(message), forwarded_for=False))


@pytest.mark.parametrize("data", RESPONSES)
async def test_a_response_gets_the_same_fields_on_both_lanes(data):
    message = parse_response(data)
    fields = raw_end_to_end(message.headers, message.raw_headers, _RESPONSE_DROPPED_RAW,
                            message.version)
    assert fields is not None
    assert lines(fields) == lowered(response_headers(message).items())


async def test_hop_by_hop_fields_are_gone_and_via_names_the_senders_version():
    # The comparisons above would pass if both lanes kept everything; this pins what goes.
    message = parse_request(b"GET / HTTP/1.0\r\nHost: r\r\nConnection: keep-alive\r\n"
                            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nExpect: 100-continue\r\n"
                            b"Proxy-Connection: close\r\nX-Kept: yes\r\n\r\n")
    fields = raw_end_to_end(message.headers, message.raw_headers, _REQUEST_DROPPED_RAW,
                            message.version)
    assert fields == b"Host: r\r\nX-Kept: yes\r\nVia: 1.0 sidecarlab\r\n"


@pytest.mark.parametrize("connection", [
    b"Connection: keep-alive, X-Foo\r\n",
    b"Connection: close\r\nConnection: X-Foo\r\n",
    b"Connection: X-Foo\r\nConnection: keep-alive\r\n",
    b"Connection: keep-alive\r\nConnection: close\r\n",
])
async def test_a_connection_field_naming_more_than_keep_alive_or_close_is_left_to_the_slow_lane(
    connection,
):
    request = parse_request(b"GET / HTTP/1.1\r\nHost: r\r\n" + connection
                            + b"X-Foo: secret\r\n\r\n")
    assert raw_end_to_end(request.headers, request.raw_headers, _REQUEST_DROPPED_RAW,
                          request.version) is None
    response = parse_response(b"HTTP/1.1 200 OK\r\n" + connection
                              + b"X-Foo: secret\r\nContent-Length: 0\r\n\r\n")
    assert raw_end_to_end(response.headers, response.raw_headers, _RESPONSE_DROPPED_RAW,
                          response.version) is None


async def test_a_cr_or_lf_inside_a_field_gives_none_even_if_the_parser_let_it_through():
    # The parser refuses such bytes; the check does not rest on that, so it is fed directly.
    message = parse_request(b"GET / HTTP/1.1\r\nHost: r\r\nX-A: 1\r\n\r\n")
    for injected in (b"1\r\nX-Evil: 1", b"1\nX-Evil: 1", b"1\rX-Evil: 1"):
        raw = ((b"Host", b"r"), (b"X-A", injected))
        assert raw_end_to_end(message.headers, raw, _REQUEST_DROPPED_RAW, message.version) is None
    assert proxy._RAW_FIELDS[_REQUEST_DROPPED_RAW] == {}  # a refusal is not remembered


async def test_the_same_fields_parsed_twice_give_the_very_same_bytes_from_the_cache():
    data = b"GET / HTTP/1.1\r\nHost: r\r\nAccept: */*\r\n\r\n"
    first, second = parse_request(data), parse_request(data)
    assert first.raw_headers is not second.raw_headers
    made = raw_end_to_end(first.headers, first.raw_headers, _REQUEST_DROPPED_RAW, first.version)
    again = raw_end_to_end(second.headers, second.raw_headers, _REQUEST_DROPPED_RAW,
                           second.version)
    assert made is again
    # An HTTP/1.0 message with the same fields gets its own Via, not the cached 1.1 lines.
    old = parse_request(data.replace(b"HTTP/1.1", b"HTTP/1.0"))
    fields = raw_end_to_end(old.headers, old.raw_headers, _REQUEST_DROPPED_RAW, old.version)
    assert fields is not None and fields.endswith(b"Via: 1.0 sidecarlab\r\n")


async def test_requests_and_responses_with_the_same_fields_do_not_share_cached_lines():
    # Expect is dropped from requests only: a shared cache would hand one side the other's.
    request = parse_request(b"GET / HTTP/1.1\r\nHost: r\r\nExpect: x\r\n\r\n")
    response = parse_response(b"HTTP/1.1 200 OK\r\nHost: r\r\nExpect: x\r\n\r\n")
    assert request.raw_headers == response.raw_headers
    assert raw_end_to_end(request.headers, request.raw_headers, _REQUEST_DROPPED_RAW,
                          request.version) == b"Host: r\r\nVia: 1.1 sidecarlab\r\n"
    assert raw_end_to_end(response.headers, response.raw_headers, _RESPONSE_DROPPED_RAW,
                          response.version) == b"Host: r\r\nExpect: x\r\nVia: 1.1 sidecarlab\r\n"


async def test_the_cache_stays_bounded_when_every_message_is_new(monkeypatch):
    monkeypatch.setattr(proxy, "RAW_FIELDS_CACHE_SIZE", 4)
    cache = proxy._RAW_FIELDS[_REQUEST_DROPPED_RAW]
    sizes = []
    for number in range(11):
        message = parse_request(b"GET / HTTP/1.1\r\nHost: r\r\nX-Id: %d\r\n\r\n" % number)
        fields = raw_end_to_end(message.headers, message.raw_headers, _REQUEST_DROPPED_RAW,
                                message.version)
        assert fields == b"Host: r\r\nX-Id: %d\r\nVia: 1.1 sidecarlab\r\n" % number
        sizes.append(len(cache))
    assert max(sizes) == 4
    assert sizes == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]  # cleared when full, then filled again
