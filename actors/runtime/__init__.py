"""The runtime: supervisor, child-process entry points, collector, producer, spool, state, monitoring."""
