"""The control plane: versioned proxy configs in SQLite, served over HTTP and gRPC.

- store.py: the SQLite file (every version of every service, and node ACK/NACK reports)
- hub.py: the async face of the store: validates, stores off the event loop, wakes watchers
- registry.py: node agents' heartbeats, and whether each node is healthy, suspect or dead
- http_api.py: the HTTP API (`create_app()`), long polls included
- grpc_service.py: the gRPC API (Watch, Ack, Heartbeat) plus grpc.health.v1
- __main__.py: both APIs in one process, with a graceful stop on SIGTERM
"""
