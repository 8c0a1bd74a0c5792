"""The gRPC protocols of the reference systems, with their generated code (see generate.py)."""
