"""HTTP response models: what ``/openapi.json`` says each route answers.

The models document; they do not run. A route declares its model (``response_model=``) and
returns :func:`reply` around what a presenter (``edgefleet.presenters``) shaped: FastAPI
passes a returned ``Response`` through as it is, so an answer is serialized once, with no
validation pass on the way out (issue 19). The tests validate every answer of the API
against its route's model (``tests/conftest.py``), so a model cannot drift from its presenter.

Models forbid keys they do not name (``additionalProperties: false`` in the schema), so an
undocumented key a presenter adds fails those tests. Compatible models (ThingsPro v2.5)
match the official spec where it agrees with itself (``tests/contract/test_response_models.py``).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from fastapi import Response
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError, to_json

from edgefleet.jsontree import without_surrogates


class Answer(BaseModel):
    """The base of every response model: no key beyond those it names."""

    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(Answer, Generic[T]):
    """ThingsPro's list wrapper, used by every list of ours too."""

    count: int
    limit: int
    offset: int
    data: list[T]


def reply(content: Any, status_code: int = 200) -> Response:
    """A presenter's JSON answer, serialized once and not validated (the route's
    ``response_model`` documents it).

    pydantic-core's serializer (Rust) writes the bytes FastAPI wrote before, when it encoded
    a route's ``dict[str, Any]`` itself (compact, UTF-8, NaN and infinities as ``null``), at
    a third of the CPU of the standard library's ``json`` that ``JSONResponse`` uses."""
    return Response(json_bytes(content), status_code=status_code, media_type="application/json")


def json_bytes(content: Any) -> bytes:
    """``content`` as compact UTF-8 JSON, whatever a stored document holds: NaN and infinities
    (a number too large for a double in PostgreSQL's ``json`` reads back as one) are written
    ``null``, and a lone surrogate (kept by that type as an escape, and no UTF-8 encoder takes
    it) becomes U+FFFD, as a UTF-8 decoder does with a broken sequence. The second pass only
    runs for a document the first refused."""
    try:
        return to_json(content, inf_nan_mode="null")
    except PydanticSerializationError:
        return to_json(_scrubbed(content), inf_nan_mode="null")


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return without_surrogates(value)
    if isinstance(value, dict):
        return {_scrubbed(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value
