"""What the console's settings page tells about this server's storage: the database's kind
and where it is, read from its URL, never its password or its URL's query."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from edgefleet.settings import MASK


def database_facts(raw: str) -> dict[str, str]:
    """The database's kind and where it is, from its URL ``raw``."""
    try:
        url = make_url(raw)
    except ArgumentError:
        return {"kind": raw.split(":", 1)[0] or "unknown", "where": "(not a URL SQLAlchemy reads)"}
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {"kind": "SQLite", "driver": url.drivername, "where": url.database or ":memory:"}
    where = url.host or "(local socket)"
    if url.port:
        where = f"{where}:{url.port}"
    return {
        "kind": "PostgreSQL" if backend == "postgresql" else backend,
        "driver": url.drivername,
        "where": where,
        "database": url.database or "",
        "user": url.username or "",
        "password": MASK if url.password else "(none in the URL)",
    }
