"""Tetragon-compatible gRPC API: stubs (`pb`), event conversion, server and client.

Submodules are imported on demand; `vigil.api.pb` generates the stubs on first use.
"""
