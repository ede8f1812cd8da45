"""Repositories: the only SQL in edgefleet. Each works inside a caller's session."""
