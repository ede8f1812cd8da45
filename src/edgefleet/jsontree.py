"""The rules every JSON document from outside obeys, wherever it arrives (a REST body, a
gateway's MQTT message): nested at most ``MAX_DEPTH`` levels, no NUL and no lone UTF-16
surrogate in any key or string (PostgreSQL refuses both; no UTF-8 encoder takes a surrogate),
integers within 64 bits and floats finite (SQLite's JSON keeps exactly that; NaN and Infinity
are not JSON).

One walk, without recursion (any depth a parser produced is inspected safely), used by
``domain/limits.py`` (the API: the problem with its path, for a 400 naming the field) and
``protocol/messages.py`` (gateways: the problem's code, a metric label). The walk that finds
a problem keeps no paths; the path is only worked out for a document already refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32
"""Levels of objects and arrays a document may nest (``{"a": 1}`` is 1)."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# what is wrong, as a short fixed code (protocol/messages.py uses them as metric labels)
NUL = "nul"
SURROGATE = "surrogate"
NUMBER = "number"
TOO_DEEP = "too_deep"

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    text: str
    path: Path = ()
    """Where, from the root: keys and indexes (a key's own problem is at its object's path)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(value: str) -> str:
    """``value`` with each lone surrogate (no UTF-8 encoder takes one) made U+FFFD, as a UTF-8
    decoder does with a broken sequence: for writing out text stored before these rules (a
    PostgreSQL ``json`` value keeps one as an escape)."""
    return _SURROGATE.sub("\ufffd", value)


def text_problem(value: str) -> Problem | None:
    """Why ``value`` cannot be stored as text, or None."""
    if "\x00" in value:
        return Problem(NUL, "contains a NUL character (\\u0000)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return Problem(SURROGATE, "contains a lone UTF-16 surrogate, which is not a character")
    return None


def _leaf(value: Any) -> Problem | None:
    if isinstance(value, str):
        found = text_problem(value)
        return None if found is None else Problem(found.code, f"a string {found.text}")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return Problem(NUMBER, f"integer outside {INT64_MIN}..{INT64_MAX}")
    elif isinstance(value, float) and not math.isfinite(value):
        return Problem(NUMBER, "number is not finite (NaN, Infinity or beyond a double)")
    return None


def _key(key: Any) -> Problem | None:
    found = text_problem(key) if isinstance(key, str) else None
    return None if found is None else Problem(found.code, f"a key {found.text}")


def _too_deep(max_depth: int) -> Problem:
    return Problem(TOO_DEEP, f"JSON nested deeper than {max_depth} levels")


def problem(doc: Any, max_depth: int = MAX_DEPTH) -> Problem | None:
    """The first thing in ``doc`` that breaks the rules (without its path), or None."""
    if not isinstance(doc, dict | list):
        return _leaf(doc)
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return _too_deep(max_depth)
        if isinstance(value, dict):
            for key, item in value.items():
                found = _key(key)
                if found is None:
                    if isinstance(item, dict | list):
                        stack.append((item, depth + 1))
                        continue
                    found = _leaf(item)
                if found is not None:
                    return found
        else:
            for item in value:
                if isinstance(item, dict | list):
                    stack.append((item, depth + 1))
                elif (found := _leaf(item)) is not None:
                    return found
    return None


def located(doc: Any, max_depth: int = MAX_DEPTH) -> Problem | None:
    """The first problem in document order, with its path (slower than ``problem``: for a
    document to be refused, or whose refusal must say where)."""
    stack: list[tuple[Any, Path]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        if not isinstance(value, dict | list):
            found = _leaf(value)
            if found is not None:
                return Problem(found.code, found.text, path)
            continue
        if len(path) >= max_depth:
            return Problem(TOO_DEEP, _too_deep(max_depth).text, path)
        if isinstance(value, dict):
            for key in value:
                if (found := _key(key)) is not None:
                    return Problem(found.code, found.text, path)
            items = list(value.items())
        else:
            items = list(enumerate(value))
        stack.extend((child, (*path, key)) for key, child in reversed(items))
    return None
