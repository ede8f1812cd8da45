"""Wire models of the ThingsPro remote-control protocol (Sanji "RESTful messages").

    request   server → gateway  {"method", "resource", "data"?, "task_id"}
    response  gateway → server  {"code", "method", "resource", "data", "id", "sign", "task_id"}
    event     gateway → server  {"method", "resource", "data", "code"?}   (no task_id)
    status    gateway → server  "1" (connected) | "0" (last will, retained)

Decoding never raises anything but ``MessageError``, whatever the bytes; unknown extra keys
are kept, so a response can be handed back to API callers as the gateway sent it.

This is the one place a gateway's text is checked before anything stores it, the same for
both databases: a payload is at most ``MAX_MESSAGE_BYTES`` of UTF-8 JSON, nested at most
``MAX_DEPTH`` levels, with no NUL character and no lone surrogate in any key or string
(PostgreSQL refuses both in JSON and text), and numbers a 64-bit integer or a finite double
holds (no ``NaN``/``Infinity``, which Python's json would otherwise accept). A refusal says
why in ``MessageError.reason``, one of ``REASONS``.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet import jsontree
from edgefleet.errors import MessageError

MAX_MESSAGE_BYTES = 256 * 1024
"""Larger payloads are refused before parsing."""
MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + 1024
"""The largest MQTT packet every generated broker configuration accepts: a message of
``MAX_MESSAGE_BYTES`` with its topic and headers. A client that sends a larger one is
disconnected by the broker before the payload is read (docs/protocol.md)."""
MAX_DEPTH = jsontree.MAX_DEPTH
"""Arrays and objects nested deeper are refused (a gateway's data is a few levels deep)."""
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
"""Integers outside a signed 64-bit integer are refused."""
MIN_CODE, MAX_CODE = -(2**31), 2**31 - 1
"""A ``code`` is stored in an integer column (an HTTP status in practice)."""

# why a message was refused: a metric label, so a small fixed set
TOO_LARGE = "too_large"
ENCODING = "encoding"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
TOO_DEEP = jsontree.TOO_DEEP
NUL = jsontree.NUL
SURROGATE = jsontree.SURROGATE
NUMBER = jsontree.NUMBER
INVALID = "invalid"
BAD_STATUS = "bad_status"
REASONS = frozenset(
    {TOO_LARGE, ENCODING, NOT_JSON, NOT_OBJECT, TOO_DEEP, NUL, SURROGATE, NUMBER, INVALID}
    | {BAD_STATUS}
)

_INT_DIGITS = len(str(MAX_INT))

Method = Literal["get", "post", "put", "delete"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    method: Method
    resource: str = Field(min_length=1, max_length=2048)

    @field_validator("method", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("resource")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("resource must start with '/'")
        return v


class RequestMessage(_Wire):
    """What the server asks a gateway to do: one REST call on the gateway's own API."""

    task_id: str = Field(min_length=1, max_length=128)
    data: Any = None


class ResponseMessage(_Wire):
    """The gateway's answer to a request; ``task_id`` echoes the request's."""

    task_id: str = Field(min_length=1, max_length=128)
    code: int = Field(ge=MIN_CODE, le=MAX_CODE)
    data: Any = None
    id: int | None = None
    sign: list[str] = Field(default_factory=list)


class EventMessage(_Wire):
    """Something the gateway reports on its own (property change, firmware result, …)."""

    code: int | None = Field(default=None, ge=MIN_CODE, le=MAX_CODE)
    data: Any = None
    event_id: str | None = Field(default=None, min_length=1, max_length=64)
    """edgefleet's extension: a gateway-made id (unique per gateway) by which the server
    stores a redelivered event once. ThingsPro gateways send none."""


ClientMessage = ResponseMessage | EventMessage


def new_event_id() -> str:
    """An ``event_id`` for a gateway's event."""
    return uuid.uuid4().hex


def encode(message: BaseModel) -> bytes:
    """Compact JSON; a request without data carries no ``data`` key, as the original sent it."""
    body = message.model_dump(mode="json")
    if isinstance(message, RequestMessage) and body.get("data") is None:
        body.pop("data", None)
    if isinstance(message, EventMessage) and body.get("event_id") is None:
        body.pop("event_id", None)
    return json.dumps(body, separators=(",", ":")).encode()


def encode_response(response: ResponseMessage) -> bytes:
    """A gateway's answer as it may be sent: one larger than ``MAX_MESSAGE_BYTES`` becomes a
    ``413`` answer saying so (the broker would close the connection of a gateway sending more,
    and the request, redelivered, would be answered the same way again)."""
    payload = encode(response)
    if len(payload) <= MAX_MESSAGE_BYTES:
        return payload
    refusal = response.model_copy(
        update={
            "code": 413,
            "data": {"message": f"answer of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}"},
        }
    )
    return encode(refusal)


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _INT_DIGITS or not MIN_INT <= (n := int(text)) <= MAX_INT:
        raise MessageError(f"integer {text[:24]}… is outside 64 bits", NUMBER)
    return n


def _float(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise MessageError(f"number {text[:24]} is not a finite double", NUMBER)
    return f


def _constant(name: str) -> float:
    raise MessageError(f"{name} is not a JSON number", NUMBER)


def _check_tree(doc: Any) -> None:
    """Depth, and the text of every key and string (``jsontree``, the API's rules too)."""
    found = jsontree.problem(doc, MAX_DEPTH)
    if found is not None:
        raise MessageError(
            found.text if found.code == TOO_DEEP else f"a value {found.text}", found.code
        )


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(
            f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}", TOO_LARGE
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(
            f"message is not UTF-8: {exc.reason} at byte {exc.start}", ENCODING
        ) from None
    try:
        doc = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise MessageError(f"message is not JSON: {exc}", NOT_JSON) from None
    except RecursionError:
        raise MessageError(f"JSON nested deeper than {MAX_DEPTH} levels", TOO_DEEP) from None
    if not isinstance(doc, dict):
        raise MessageError(f"message must be a JSON object, not {type(doc).__name__}", NOT_OBJECT)
    _check_tree(doc)
    return doc


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
    )


def decode_request(payload: bytes) -> RequestMessage:
    doc = _load(payload)
    try:
        return RequestMessage.model_validate(doc)
    except ValidationError as exc:
        raise MessageError(f"bad request message: {_explain(exc)}", INVALID) from None


def request_echo(payload: bytes) -> RequestMessage | None:
    """What the answer to an unreadable request echoes (its task_id, method and resource, with
    no data), when the request names them readably: a gateway answers it 400 rather than leave
    the server waiting out its timeout. None when they cannot be read (nobody to answer)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:  # numbers and constants are not echoed: any will do, however odd
        doc = json.loads(payload, parse_int=_zero, parse_float=_zero, parse_constant=_zero)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        return None
    if not isinstance(doc, dict):
        return None
    echo = {k: doc[k] for k in ("task_id", "method", "resource") if k in doc}
    try:
        _check_tree(echo)
        return RequestMessage.model_validate(echo)
    except (MessageError, ValidationError):
        return None


def _zero(_: str) -> int:
    return 0


def decode_client(payload: bytes) -> ClientMessage:
    """A message from a gateway's ``client`` topic: a response if it has a ``task_id``."""
    doc = _load(payload)
    try:
        if "task_id" in doc:
            return ResponseMessage.model_validate(doc)
        return EventMessage.model_validate(doc)
    except ValidationError as exc:
        kind = "response" if "task_id" in doc else "event"
        raise MessageError(f"bad {kind} message: {_explain(exc)}", INVALID) from None


def decode_status(payload: bytes) -> bool:
    """``True`` for "1" (online), ``False`` for "0" (offline)."""
    text = payload.strip()
    if text == b"1":
        return True
    if text == b"0":
        return False
    raise MessageError(f"status payload must be '1' or '0', not {payload[:20]!r}", BAD_STATUS)
