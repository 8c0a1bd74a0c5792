"""Strip hop-by-hop header fields before a proxy forwards a message (RFC 9110, section 7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

# Fields that describe one connection, not the message, and so must not cross a proxy even
# when the sender forgot to list them in `Connection` (RFC 9110 section 7.6.1).
ALWAYS_HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"}
)


def connection_options(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Return the lower-cased field names listed in every `Connection` field of `headers`."""
    options = set()
    for name, value in headers:
        if name.lower() == "connection":
            options.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(options)


# --8<-- [start:strip]
def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the end-to-end fields of `headers`, in order, as `(name, value)` pairs."""
    pairs = list(headers)
    # A sender can name any field in `Connection` (say `Connection: X-Foo`); such a field was
    # meant for this hop only, and forwarding it lets a client smuggle headers past a proxy.
    dropped = ALWAYS_HOP_BY_HOP | connection_options(pairs)
    return [(name, value) for name, value in pairs if name.lower() not in dropped]
# --8<-- [end:strip]
