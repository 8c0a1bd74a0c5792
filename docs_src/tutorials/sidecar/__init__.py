"""Sidecar tutorial: from a streaming forwarder to a remotely configured proxy, in five steps."""
