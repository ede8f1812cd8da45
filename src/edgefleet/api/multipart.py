"""Streaming ``multipart/form-data``: each file goes to the file store while it arrives.

Starlette's ``request.form()`` spools every file completely before a handler sees it, so it
cannot stop an oversized upload while reading it. Here python-multipart's push parser is fed
from ``request.stream()`` and turned into parts a caller pulls: a file part's bytes are read
from the network only as fast as the store takes them, and the size limit (enforced by the
store) stops the upload at the first byte too many. Whatever a failed request had stored is
discarded.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match
from starlette.types import Scope

from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import check_text
from edgefleet.errors import FileTooLargeError, ValidationError
from edgefleet.files import StoredFile
from edgefleet.services.files import FileKind, FileService

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 1024 * 1024
"""The largest plain (non-file) field, e.g. ``jsonData``."""
MAX_FIELDS = 100
MAX_UPLOAD_FILES = 5
"""The most files any upload route takes (filebin and deviceTasks, as the original)."""


def upload_limit(max_file_bytes: int) -> int:
    """The largest multipart body any upload route may receive (api/bodylimit.py); each
    route's own count of files and each file's size are checked while it streams."""
    return MAX_UPLOAD_FILES * max_file_bytes + MAX_FIELD_BYTES


_HEADERS, _DATA, _END = range(3)


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; ``ValidationError`` otherwise."""
    kind, params = parse_options_header(content_type)
    if kind.lower() != b"multipart/form-data":
        raise ValidationError("expected a multipart/form-data body")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ValidationError("multipart/form-data without a boundary")
    return boundary


def is_multipart(content_type: str) -> bool:
    return parse_options_header(content_type)[0].lower() == b"multipart/form-data"


@dataclass(frozen=True)
class FormField:
    name: str
    value: str


@dataclass(frozen=True)
class FormFile:
    name: str
    filename: str
    content_type: str
    chunks: AsyncIterator[bytes]
    """The part's bytes, read from the request as they are pulled; pull them once."""


class MultipartReader:
    """Parts of one multipart body, pulled in order from a stream of request chunks."""

    def __init__(self, boundary: bytes, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._events: deque[tuple[int, Any]] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = bytearray()
        self._value = bytearray()
        self._complete = False
        self._eof = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise ValidationError("invalid multipart boundary") from exc

    # python-multipart callbacks: they only queue events
    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((bytes(self._name).lower(), bytes(self._value)))
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._events.append((_HEADERS, self._headers))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append((_DATA, bytes(data[start:end])))

    def _part_end(self) -> None:
        self._events.append((_END, None))

    def _end(self) -> None:
        self._complete = True

    async def _next(self) -> tuple[int, Any] | None:
        while not self._events:
            if self._eof:
                return None
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                self._eof = True
                if not self._complete:
                    raise ValidationError(
                        "the multipart body ended before its closing boundary"
                    ) from None
                continue
            except ClientDisconnect:
                raise ValidationError("upload interrupted: the client went away") from None
            if chunk and not self._complete:
                try:
                    self._parser.write(chunk)
                except FormParserError as exc:
                    raise ValidationError("malformed multipart body") from exc
        return self._events.popleft()

    async def _body(self) -> AsyncIterator[bytes]:
        while (event := await self._next()) is not None:
            kind, value = event
            if kind == _DATA:
                yield value
            elif kind == _END:
                return

    async def parts(self) -> AsyncGenerator[FormField | FormFile, None]:
        while (event := await self._next()) is not None:
            kind, headers = event
            if kind != _HEADERS:
                continue
            name, filename, content_type = _describe(headers)
            body = self._body()
            if filename is None:
                value = bytearray()
                async for chunk in body:
                    value += chunk
                    if len(value) > MAX_FIELD_BYTES:
                        raise ValidationError(
                            f"form field {name!r} is larger than {MAX_FIELD_BYTES} bytes"
                        )
                yield FormField(name, value.decode("utf-8", errors="replace"))
                continue
            if filename:  # an empty file input sends filename="" and no bytes: not a file
                yield FormFile(name, filename, content_type, body)
            async for _ in body:  # whatever the consumer left unread
                pass


def _describe(headers: list[tuple[bytes, bytes]]) -> tuple[str, str | None, str]:
    found = dict(headers)
    _, options = parse_options_header(found.get(b"content-disposition", b""))
    if b"name" not in options:
        raise ValidationError('a multipart part has no Content-Disposition "name"')
    name = options[b"name"].decode("utf-8", errors="replace")
    raw = options.get(b"filename")
    filename = None if raw is None else raw.decode("utf-8", errors="replace")
    content_type = found.get(b"content-type", b"").decode("latin-1").strip()
    return name, filename, content_type


@dataclass(frozen=True)
class Upload:
    fieldname: str
    file: StoredFile


@dataclass
class ReceivedForm:
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


async def receive_form(
    request: Request,
    files: FileService,
    *,
    max_files: int,
    kind: FileKind,
    created_by: str,
) -> ReceivedForm:
    """Read a whole multipart request, saving its files (any field names, at most
    ``max_files``) as they arrive; on any error nothing of it is kept."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_files * files.max_file_bytes + MAX_FIELD_BYTES:
        raise FileTooLargeError(files.max_file_bytes)
    form = ReceivedForm()
    n_fields = 0
    try:
        reader = MultipartReader(boundary, request.stream())
        async with contextlib.aclosing(reader.parts()) as parts:
            async for part in parts:
                check_text(part.name, ("body",))  # the same rules as any other text sent
                if isinstance(part, FormField):
                    n_fields += 1
                    if n_fields > MAX_FIELDS:
                        raise ValidationError(f"more than {MAX_FIELDS} form fields")
                    check_text(part.value, ("body", part.name))
                    form.fields.setdefault(part.name, []).append(part.value)
                    continue
                check_text(part.filename, ("body", part.name, "filename"))
                check_text(part.content_type, ("body", part.name, "content-type"))
                if len(form.files) >= max_files:
                    raise ValidationError(
                        f"at most {max_files} file{'s' if max_files > 1 else ''} per request"
                    )
                stored = await files.save(
                    part.chunks,
                    part.filename,
                    part.content_type,
                    kind=kind,
                    created_by=created_by,
                )
                form.files.append(Upload(part.name, stored))
    except BaseException:
        await files.discard([u.file.key for u in form.files])
        raise
    return form


class MultipartRoute(CompatRoute):
    """A compatible route that matches only ``multipart/form-data`` requests, so that a JSON
    route on the same path and method, declared after it, serves every other request."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL and not is_multipart(Headers(scope=scope).get("content-type", "")):
            return Match.NONE, {}
        return match, child
