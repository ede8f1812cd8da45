"""Structured logging: structlog renders both its own and stdlib (``%``-style) records.

JSON for production (one object per line), coloured key=value for a terminal. What keeps the
log safe to keep and cheap to write, whatever a request does:

- Tracebacks are plain text (file, line, source line), never local variables: Rich's dump of
  locals turned one HTTP 500 into ~13,000 lines that held API tokens, session secrets and a
  new password, and rendering it stalled the event loop for 7-14 s.
- Values under secret-looking keys of a structured event are masked (``redact``): defence in
  depth, since code must not log secrets in the first place.
- The event loop only enqueues a record; a thread formats and writes it. The queue holds
  ``QUEUE_SIZE`` records. When it is full (the output cannot keep up: a stalled pipe, a burst)
  a new record is dropped rather than waited for, counted in
  ``edgefleet_log_records_dropped_total``, and a warning saying how many were dropped is
  logged as soon as there is room again. ``flush`` waits until the queue is written; it runs
  at exit and before uvicorn re-raises a stop signal, so the last lines are not lost.
- An unhandled request error is logged once (``api.errors.UnexpectedErrors``).
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter

from edgefleet.settings import LogFormat

QUEUE_SIZE = 10_000
"""Records waiting to be written; beyond that new ones are dropped (and counted)."""

FLUSH_SECONDS = 5.0
"""How long an exit waits for the queue to be written (a stalled output must not hang it)."""

DROPPED = Counter(
    "edgefleet_log_records_dropped_total",
    "Log records dropped because the log output could not keep up",
)

SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|pwd|token|secret|psk|key|authori[sz]ation|cookie|credential"
    r"|session|signature",
    re.IGNORECASE,
)
"""Event keys whose values are masked, anywhere in a structured event (``mx-api-token``,
``newPassword``, ``secret_key``, ``Set-Cookie``, …)."""

DATA_LOGGERS = ("aiosqlite", "botocore")
"""Libraries whose DEBUG records carry data, held at INFO whatever the configured level:
aiosqlite logs each statement with its bound values (CSRF tokens, hashes, user input),
botocore each S3 request with its signed headers."""

REDACTED = "[redacted]"
_NOT_REDACTED = frozenset({"event", "level", "logger", "timestamp", "exception", "exc_info"})
_REDACT_DEPTH = 8

_CONTEXT = "_edgefleet_context"
"""A stdlib record's structlog context variables, taken on the thread that logged it."""


@dataclass
class _Pipeline:
    """The queue's handler on the root logger, and the thread that writes the records."""

    handler: BoundedQueueHandler
    listener: logging.handlers.QueueListener


_pipeline: _Pipeline | None = None


def configure(level: str = "INFO", fmt: LogFormat = LogFormat.CONSOLE) -> None:
    """Send every record (structlog's and stdlib's) through the queue to stderr in ``fmt``."""
    global _pipeline
    shutdown()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            _timestamp,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    rendering: list[structlog.types.Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        redact,
    ]
    if fmt is LogFormat.JSON:
        # format_exc_info renders Python's own traceback text: never local variables
        rendering += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        rendering.append(
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(),
                exception_formatter=structlog.dev.plain_traceback,
            )
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        # runs on the writer thread: everything here takes its data from the record
        foreign_pre_chain=[
            _merge_record_context,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _timestamp,
        ],
        processors=rendering,
    )
    output = _Output(sys.stderr)
    output.setFormatter(formatter)
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    handler = BoundedQueueHandler(records)
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    _pipeline = _Pipeline(handler, listener)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in DATA_LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(max(logging.INFO, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQuery) for f in access.filters):
        access.addFilter(DropQuery())


def flush(timeout: float = FLUSH_SECONDS) -> bool:
    """Wait until every queued record is written (at most ``timeout`` s); False if not."""
    return _pipeline is None or _written(_pipeline, timeout)


def shutdown(timeout: float = FLUSH_SECONDS) -> None:
    """Write what is queued and stop the writer thread. Until ``configure`` runs again,
    records go to Python's last resort (warnings and errors, plain, on stderr)."""
    global _pipeline
    pipeline, _pipeline = _pipeline, None
    if pipeline is None:
        return
    logging.getLogger().removeHandler(pipeline.handler)
    if _written(pipeline, timeout):
        pipeline.listener.stop()
    # else: the output is stalled; the writer is a daemon thread and dies with the process


def _written(pipeline: _Pipeline, timeout: float) -> bool:
    records = pipeline.handler.queue
    assert isinstance(records, queue.Queue)
    deadline = time.monotonic() + timeout
    while records.unfinished_tasks:  # the writer marks each record done once written
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


atexit.register(shutdown)  # before logging's own shutdown, which atexit runs later


class _Output(logging.StreamHandler):  # type: ignore[type-arg]
    """The writer thread's output. A record it cannot write (the stream closed under it, a
    full disk) is lost, never raised: the standard handler reports the failure on stderr and,
    that stream closed too, raises, which ends the writer thread, after which every record
    queues until the queue is full and the log goes silent."""

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            super().handleError(record)
        except Exception:  # noqa: S110 - nowhere left to report it
            pass


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread without waiting: a full queue drops the record
    (counted), and the next record that fits is preceded by a warning saying how many."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The stdlib's prepare formats here, on the caller's thread (the event loop): this one
        # only fixes the message, whose arguments may change once the caller goes on. The
        # traceback stays an object, rendered by the writer.
        record = copy.copy(record)
        if not isinstance(record.msg, dict):  # structlog's own events are already a copy
            record.msg = record.getMessage()
            record.args = None
            context = structlog.contextvars.get_contextvars()
            if context:
                setattr(record, _CONTEXT, context)
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        # called with the handler's lock held: ``dropped`` needs no lock of its own
        records = self.queue
        if self.dropped:
            notice = logging.makeLogRecord(
                {
                    "name": __name__,
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": f"{self.dropped} log records dropped: the log output could not keep up",
                }
            )
            try:
                records.put_nowait(notice)
            except queue.Full:
                self._drop()
                return
            self.dropped = 0
        try:
            records.put_nowait(record)
        except queue.Full:
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        DROPPED.inc()


class DropQuery(logging.Filter):
    """Access log lines without query strings: a download link's signature (filebin, S3
    presigned) is a credential while it lives, and must not reach the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def redact(
    logger: object, name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Mask the values of secret-looking keys (``SECRET_KEY``), in nested dicts too; the
    caller's objects are never changed."""
    return {
        key: value if key in _NOT_REDACTED else _redacted(key, value, 0)
        for key, value in event_dict.items()
    }


def _redacted(key: object, value: Any, depth: int) -> Any:
    if isinstance(key, str) and SECRET_KEY.search(key):
        return REDACTED
    if depth >= _REDACT_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: _redacted(k, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(None, v, depth + 1) for v in value]
    return value


def _timestamp(
    logger: object, name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """ISO 8601 UTC time of the event: a stdlib record's own time, since it is rendered later
    on the writer thread."""
    record = event_dict.get("_record")
    created = record.created if isinstance(record, logging.LogRecord) else time.time()
    event_dict["timestamp"] = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return event_dict


def _merge_record_context(
    logger: object, name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    record = event_dict.get("_record")
    context = getattr(record, _CONTEXT, None)
    if context:
        return {**context, **event_dict}
    return event_dict
