"""The node agent: one per host, serving every local app (Istio ambient's ztunnel pattern).

- registry.py: the local apps, each with its own OutboundProxy and outbound listener
- local_api.py: the NodeAgent gRPC API (Register, Deregister, ListApps) on a Unix socket
- configs.py: one ConfigStore per service, validated by parse_proxy_config
- watch.py: one Watch stream to the control plane for every service, with ACK/NACK
- heartbeat.py: node facts and applied versions, at the interval the control plane asks
- cache.py: the last good config of each service on disk, for starts while it is down
- background.py: start() and stop() for the watch and heartbeat loops
- agent.py: all of the above composed, with the admin listener and the drain on SIGTERM
- __main__.py: the command line
"""
