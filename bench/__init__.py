"""Benchmarks: tenant_mcp against the bare SDK, measured in the same run. `python -m bench --help`."""
