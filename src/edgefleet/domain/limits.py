"""What every database edgefleet runs on can hold: the rules for text, numbers, dates and JSON
that come from outside (REST clients today), checked once at the boundary so SQLite and
PostgreSQL are given the same values and neither can fail on them.

- **Text** holds no NUL (PostgreSQL cannot store it) and no lone UTF-16 surrogate (not a
  character: no UTF-8 encoder, database driver or JSON encoder takes it).
- **Integers** fit the column: ``INT32`` for the ``Integer`` keys (users, groups, tokens,
  firmware), ``INT64`` for the 64-bit ones (tasks, events, deliveries) and for offsets.
- **Times** lie between ``EARLIEST`` and ``LATEST`` once converted to UTC: a year inside what
  Python's ``datetime`` holds at each end, so that a task's expiry added to its start, or a day
  taken from a range's end, never overflows (``9999-12-31T23:59:59-14:00`` is past the end).
- **JSON** is standard JSON (no NaN or Infinity, no number beyond a double, integers within
  ``INT64``, which is what SQLite's JSON functions keep exact) nested at most
  ``MAX_JSON_DEPTH`` levels: the rules of ``jsontree``, shared with the gateway protocol.

Rules only: the HTTP layer (``api/inputs.py``) turns a broken rule into a 400/422 naming the
field. ``prune`` is the other side: JSON read back from the database deeper than
``SHOWN_JSON_DEPTH`` (stored before these rules existed) is cut there, so it cannot break the
page that shows it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from edgefleet import jsontree

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = jsontree.INT64_MIN, jsontree.INT64_MAX

EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

MAX_JSON_DEPTH = jsontree.MAX_DEPTH
"""Levels of objects and arrays a JSON document sent to the API may nest (``{"a": 1}`` is 1)."""
SHOWN_JSON_DEPTH = 64
"""Levels of stored JSON shown; deeper parts are replaced by ``CUT``."""
CUT = "(cut: nested too deep)"

Path = jsontree.Path

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    found = jsontree.text_problem(value)
    return None if found is None else found.text


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD: for recording what a client
    sent where refusing is not an option (the audit entry of a refused request)."""
    return _UNSTORABLE.sub("\ufffd", text)


def json_problem(doc: Any) -> tuple[Path, str] | None:
    """The first place in a parsed JSON document that breaks the rules (``jsontree``), and
    why; or None."""
    if jsontree.problem(doc, MAX_JSON_DEPTH) is None:  # the usual case: no paths kept
        return None
    found = jsontree.located(doc, MAX_JSON_DEPTH)
    return None if found is None else (found.path, found.text)


def utc_time(at: datetime) -> datetime:
    """``at`` in UTC (a time without offset is taken as UTC); ``ValueError`` when it lies
    outside ``EARLIEST``..``LATEST``."""
    try:
        utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError(
            f"time must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()} in UTC"
        )
    return utc


def _too_deep(doc: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth >= limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def prune(doc: Any, limit: int = SHOWN_JSON_DEPTH) -> Any:
    """``doc`` with every object or array deeper than ``limit`` levels replaced by ``CUT``
    (``doc`` itself when nothing is that deep)."""
    if not isinstance(doc, dict | list) or not _too_deep(doc, limit):
        return doc

    def cut(value: Any, depth: int) -> Any:
        if not isinstance(value, dict | list):
            return value
        if depth >= limit:
            return CUT
        if isinstance(value, dict):
            return {k: cut(v, depth + 1) for k, v in value.items()}
        return [cut(v, depth + 1) for v in value]

    return cut(doc, 0)
