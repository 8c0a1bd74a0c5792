"""Sidecar Lab reference building blocks.

Each module holds one concept a sidecar or a node agent needs, and imports only the standard
library and the project's chosen dependencies, so it can be copied into another project alone.
"""
