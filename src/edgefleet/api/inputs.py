"""The HTTP boundary's one check of client input (the rules are ``domain/limits.py``).

- ``check_request``, a dependency of the whole app, runs before any handler, parameter
  validation or credential check: every path and query parameter (name and value) and every
  JSON body is refused with the route's validation error (422 problem+json, or 400
  ``{"message"}`` on compatible routes) naming the field, when it holds a NUL or a lone
  surrogate, a non-finite number or an integer beyond 64 bits, or nests deeper than
  ``MAX_JSON_DEPTH``. Routes that parse JSON themselves (the legacy ``query`` parameter, a
  multipart ``jsonData``) call ``parse_json``.
- The annotated types bound what pydantic accepts to what the column holds: ``Int32`` and
  ``Int64`` for ids, ``Offset`` for list offsets, ``Timestamp`` and ``AwareTimestamp`` for
  times, given back in UTC (OpenAPI shows the number bounds, so clients and the schema fuzzer
  see them too).
"""

from __future__ import annotations

import json
from datetime import datetime
from email.message import Message
from typing import Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, Field

from edgefleet.domain.limits import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    Path,
    json_problem,
    text_problem,
    utc_time,
)

Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
"""An id of an ``Integer`` column (users, groups, tokens, firmware)."""
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An id of a 64-bit column (tasks and job relays, events, deliveries, audit entries)."""
Offset = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""How many rows of a list to skip."""


def _has_offset(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("needs a time-zone offset, e.g. 2027-01-01T00:00:00Z")
    return at


# utc_time raises ValueError out of range: pydantic reports it for the field
Timestamp = Annotated[datetime, AfterValidator(utc_time)]
"""A time in UTC (one without offset is UTC) that both databases hold and that task
arithmetic cannot overflow."""
AwareTimestamp = Annotated[datetime, AfterValidator(_has_offset), AfterValidator(utc_time)]
"""As ``Timestamp``, for times that must say their offset."""


def refuse(loc: Path, reason: str) -> RequestValidationError:
    """The validation error of one field, as FastAPI reports its own."""
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": reason, "input": None}]
    )


def check_text(value: str, loc: Path) -> None:
    reason = text_problem(value)
    if reason:
        raise refuse(loc, reason)


def check_json(doc: Any, loc: Path) -> None:
    found = json_problem(doc)
    if found:
        path, reason = found
        raise refuse((*loc, *path), reason)


def parse_json(raw: str | bytes, loc: Path) -> Any:
    """Standard JSON that keeps the rules, or the validation error of ``loc``."""
    try:
        doc = json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise refuse(loc, f"not JSON: {exc.msg} at position {exc.pos}") from None
    except _NonStandard as exc:
        raise refuse(loc, f"{exc.args[0]} is not a JSON number") from None
    except RecursionError:
        raise refuse(loc, "JSON nested too deep") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise refuse(loc, f"not usable JSON: {exc}") from None
    check_json(doc, loc)
    return doc


class _NonStandard(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonStandard(name)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def read_json(request: Request) -> Any:
    """The request's body as JSON that keeps the rules (for routes that read it themselves)."""
    return parse_json(await request.body(), ("body",))


async def check_request(request: Request) -> None:
    """Refuse a request whose path, query or JSON body breaks the rules (see module doc)."""
    for name, value in request.path_params.items():
        if isinstance(value, str):
            check_text(value, ("path", name))
    for name, value in request.query_params.multi_items():
        check_text(name, ("query",))
        check_text(value, ("query", name))
    if request.method not in ("GET", "HEAD", "OPTIONS") and _is_json(
        request.headers.get("content-type")
    ):
        body = await request.body()
        if body:
            await _check_body(request, body)


async def _check_body(request: Request, body: bytes) -> None:
    # FastAPI parses a route's JSON body (with Python's lenient parser, which takes NaN and
    # lone surrogates) before dependencies run, and keeps it on the request: check that
    # document rather than parse the body twice.
    try:
        doc = await request.json()
    except (ValueError, RecursionError):
        doc = parse_json(body, ("body",))  # raises the error that says why
    check_json(doc, ("body",))
