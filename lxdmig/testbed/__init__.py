"""The two-host test bed: real network namespaces, real LXC, real CRIU.

Used by the integration tests, the demo and the benchmarks, and by hand
through ``scripts/testbed`` (see docs/testbed.md).
"""
