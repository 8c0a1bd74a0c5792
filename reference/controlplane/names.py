"""What the control plane accepts as a service name or a node id."""

from __future__ import annotations

import re

__all__ = ["MAX_NODE_ID_LENGTH", "check_node_id", "check_service_name"]

# A DNS label (RFC 1123), as Kubernetes requires of Service names: the name ends up in URLs,
# Host headers, file names of caches and log lines, and this keeps it safe in all of them.
SERVICE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# A DNS subdomain at most, like a Kubernetes node name.
MAX_NODE_ID_LENGTH = 253


def check_service_name(name: str) -> str:
    """Return `name` if it is a DNS label; raise ValueError with the rule otherwise."""
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not SERVICE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid service name {name[:80]!r}: use 1-63 lowercase letters, digits and '-',"
            " starting and ending with a letter or digit"
        )
    return name


def check_node_id(node_id: str) -> str:
    """Return `node_id` if it is 1-253 printable characters; raise ValueError otherwise."""
    if not 0 < len(node_id) <= MAX_NODE_ID_LENGTH or not node_id.isprintable():
        raise ValueError(f"node_id must be 1-{MAX_NODE_ID_LENGTH} printable characters")
    return node_id
