"""Server variants for the benchmarks (imported by `tenant-mcp serve` in the server process)."""

from example_servers.notes import app as notes_without_guard

# The same notes app with its outbound leak guard off, to measure what the guard costs.
notes_without_guard.leak_guard = None
