"""The log pipeline's own rules: secret-looking keys masked, a full queue drops (and says so)
instead of waiting, and tracebacks rendered without local variables in both formats."""

from __future__ import annotations

import io
import json
import logging
import queue
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import structlog

from edgefleet import logs
from edgefleet.settings import LogFormat


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, msg, args, None)


def test_secret_looking_keys_are_masked_at_any_depth_when_an_event_is_rendered() -> None:
    headers = {"mx-api-token": "t0k", "Accept": "*/*"}
    event = {
        "event": "request",
        "password": "hunter2",
        "newPassword": "n3w",
        "request": {"headers": headers, "jar": [{"edgefleet_session": "s3s"}], "cookies": "c"},
        "psk": "0a1b",
        "count": 3,
    }
    out = logs.redact(None, "info", event)
    assert out == {
        "event": "request",
        "password": logs.REDACTED,
        "newPassword": logs.REDACTED,
        "request": {
            "headers": {"mx-api-token": logs.REDACTED, "Accept": "*/*"},
            "jar": [{"edgefleet_session": logs.REDACTED}],
            "cookies": logs.REDACTED,
        },
        "psk": logs.REDACTED,
        "count": 3,
    }
    assert headers["mx-api-token"] == "t0k"  # the caller's objects are left alone


def test_a_full_queue_drops_new_records_and_says_how_many_when_room_is_back() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(2)
    handler = logs.BoundedQueueHandler(records)
    for i in range(5):
        handler.handle(_record("line %d", i))  # returns at once: nothing waits
    assert handler.dropped == 3
    assert [records.get_nowait().getMessage() for _ in range(2)] == ["line 0", "line 1"]
    handler.handle(_record("line %d", 5))
    notice, after = records.get_nowait(), records.get_nowait()
    assert notice.levelno == logging.WARNING
    assert notice.getMessage() == "3 log records dropped: the log output could not keep up"
    assert after.getMessage() == "line 5" and handler.dropped == 0


def test_a_message_is_fixed_when_logged_not_when_written() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(2)
    handler = logs.BoundedQueueHandler(records)
    state = ["before"]
    handler.handle(_record("state %s", state))
    state[0] = "after"
    assert records.get_nowait().getMessage() == "state ['before']"


class _SlowOutput(io.StringIO):
    """A log output that takes its time, and can be stalled."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = threading.Event()
        self.flowing.set()

    def write(self, text: str) -> int:
        self.flowing.wait()
        time.sleep(0.002)
        return super().write(text)


@contextmanager
def _configured(fmt: LogFormat, buffer: io.StringIO | None = None) -> Iterator[io.StringIO]:
    """The real pipeline writing into a buffer; the test's logging put back afterwards (inside
    the test, where pytest's own handlers are those of this phase)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = buffer or io.StringIO()
    stderr, sys.stderr = sys.stderr, buffer
    try:
        logs.configure("INFO", fmt)
        yield buffer
    finally:
        logs.shutdown()
        sys.stderr = stderr
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def _fail_holding(secret: str) -> None:
    held = secret
    raise RuntimeError(f"failed with {len(held)} characters in scope")


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_a_traceback_shows_no_local_variables_in_either_format(fmt: LogFormat) -> None:
    local_secret = secrets.token_hex(8)  # in no source line a traceback shows
    with _configured(fmt) as stderr:
        try:
            _fail_holding(local_secret)
        except RuntimeError:
            logging.getLogger("test").exception("it failed")
        structlog.get_logger("test").error("structured", token="event-secret-Rt77")
        assert logs.flush()
        text = stderr.getvalue()
    assert "Traceback (most recent call last)" in text and "_fail_holding" in text
    assert local_secret not in text and "event-secret-Rt77" not in text
    if fmt is LogFormat.JSON:
        assert [json.loads(line)["event"] for line in text.splitlines()] == [
            "it failed",
            "structured",
        ]


def test_flush_returns_once_every_queued_record_is_written() -> None:
    with _configured(LogFormat.JSON, _SlowOutput()) as output:
        for i in range(200):
            logging.getLogger("test").warning("line %d", i)
        assert logs.flush()
        assert len(output.getvalue().splitlines()) == 200


def test_a_stalled_output_holds_neither_the_caller_nor_the_exit() -> None:
    output = _SlowOutput()
    output.flowing.clear()
    with _configured(LogFormat.JSON, output):
        for i in range(20):
            logging.getLogger("test").warning("line %d", i)  # returns: only enqueued
        assert not logs.flush(timeout=0.2)
        logs.shutdown(timeout=0.2)  # gives up instead of hanging
    output.flowing.set()


def test_a_closed_output_loses_records_but_not_the_writer() -> None:
    """The stream closed under the writer (and stderr with it, where logging reports a failed
    write): the records are lost, the writer thread goes on, ``flush`` still returns."""
    output = io.StringIO()
    with _configured(LogFormat.JSON, output):
        output.close()
        for i in range(3):
            logging.getLogger("test").warning("line %d", i)
        assert logs.flush(timeout=5)
        pipeline = logs._pipeline
        assert pipeline is not None
        thread = pipeline.listener._thread
        assert thread is not None and thread.is_alive()
