"""The sidecar pattern: one proxy per app instance, like Envoy next to each pod in Istio.

The listeners and their wiring are in `reference.sidecar.app`; `python -m reference sidecar`
runs one (`reference.sidecar.__main__`).
"""
