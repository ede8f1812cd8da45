"""The filter forms of the log pages (events, audit): the values a page shows back in its
form, and links that keep the filter (a page's Older and Newest links)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlencode

from fastapi import Request


def first_values(request: Request, names: Iterable[str]) -> dict[str, str]:
    return {name: request.query_params.get(name, "") for name in names}


def link(path: str, pairs: Sequence[tuple[str, str]]) -> str:
    kept = [(k, v) for k, v in pairs if v != ""]
    return f"{path}?{urlencode(kept)}" if kept else path
