"""Benchmarks: scripts that print figures (a table and JSON). They never assert on time."""
