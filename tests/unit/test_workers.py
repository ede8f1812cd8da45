"""The supervisor of background loops: restart, backoff, readiness, shutdown report."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from edgefleet.workers import Workers, WorkerState, failure_reason


def _failures(name: str) -> float:
    labels = {"worker": name}
    return REGISTRY.get_sample_value("edgefleet_worker_failures_total", labels) or 0.0


async def _until(check: Callable[[], bool], seconds: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await asyncio.sleep(0.01)


def _loop(fail: list[BaseException | None], ran: list[int]) -> Callable[[], Awaitable[None]]:
    """A loop that raises the next of ``fail`` at each start (None: runs until cancelled)."""

    async def run() -> None:
        ran.append(1)
        error = fail.pop(0) if fail else None
        await asyncio.sleep(0)
        if error is not None:
            raise error
        await asyncio.Event().wait()

    return run


async def test_a_loop_that_raises_is_logged_once_counted_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = Workers(first_delay=0.01)
    before = _failures("unit-raises")
    ran: list[int] = []
    worker = workers.start("unit-raises", _loop([RuntimeError("boom\nsecond line")], ran))
    assert worker.task is not None and worker.task.get_name() == "unit-raises"
    await _until(lambda: len(ran) == 2)
    assert worker.state is WorkerState.RUNNING
    assert (worker.failures, worker.restarts) == (1, 1)
    assert worker.last_error == "RuntimeError: boom"
    assert _failures("unit-raises") == before + 1
    logged = [r for r in caplog.records if "unit-raises" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], RuntimeError)
    assert workers.ready
    await workers.stop()
    assert worker.state is WorkerState.STOPPED  # type: ignore[comparison-overlap]  # changed by stop()


async def test_a_loop_that_returns_fails_unless_it_may_end() -> None:
    workers = Workers(first_delay=0.01)
    calls: list[str] = []

    async def returns() -> None:
        calls.append("forever")

    async def once() -> None:
        calls.append("once")

    forever = workers.start("unit-returns", returns)
    ends = workers.start("unit-ends", once, forever=False)
    await _until(lambda: calls.count("forever") >= 3 and ends.done())
    assert forever.failures >= 2 and forever.last_error is not None
    assert "returned" in forever.last_error
    assert ends.state is WorkerState.FINISHED and ends.failures == 0
    assert calls.count("once") == 1
    await workers.stop()


async def test_a_cancelled_future_inside_a_loop_is_a_failure_not_a_stop() -> None:
    workers = Workers(first_delay=0.01)
    ran: list[int] = []
    worker = workers.start("unit-cancelled", _loop([asyncio.CancelledError()], ran))
    await _until(lambda: len(ran) == 2)
    assert worker.failures == 1 and worker.state is WorkerState.RUNNING
    await workers.stop()


async def test_backoff_doubles_to_its_cap_and_starts_afresh_after_a_healthy_run(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgefleet.workers.random.uniform", lambda a, b: 1.0)  # no jitter
    workers = Workers(first_delay=0.01, max_delay=0.04, healthy_after=0.05)
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs == 6:
            await asyncio.sleep(0.1)  # a healthy run (longer than healthy_after), then fails
        elif runs > 7:
            await asyncio.Event().wait()
        raise RuntimeError(f"run {runs}")

    worker = workers.start("unit-backoff", run)
    await _until(lambda: runs == 8)
    waits = [
        r.args[2]
        for r in caplog.records
        if isinstance(r.args, tuple) and r.args and r.args[0] == "unit-backoff"
    ]
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.04, 0.01, 0.02]
    assert worker.failures == 7
    await workers.stop()


async def test_a_worker_failing_again_and_again_makes_the_process_not_ready() -> None:
    workers = Workers(first_delay=0.01, max_delay=0.02, healthy_after=2.0, failing_after=3)
    broken = True
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if broken:
            raise RuntimeError("still broken")
        await asyncio.Event().wait()

    worker = workers.start("unit-failing", run)
    workers.start("unit-fine", _loop([], []))
    await _until(lambda: worker.failures >= 3)
    assert not workers.ready
    report = workers.report()
    assert report["unit-failing"]["failing"] is True
    assert report["unit-failing"]["lastError"] == "RuntimeError: still broken"
    assert report["unit-fine"] == {
        "state": "running",
        "failing": False,
        "failures": 0,
        "restarts": 0,
        "lastError": None,
        "lastFailureAt": None,
    }
    broken = False
    restarted = runs
    await _until(lambda: runs > restarted and worker.state is WorkerState.RUNNING)
    assert not workers.ready  # running again, not yet for healthy_after
    await _until(lambda: workers.ready)
    assert not workers.report()["unit-failing"]["failing"]
    await workers.stop()


async def test_stop_cancels_every_worker_and_reports_those_that_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = Workers(first_delay=0.01)
    cleaned: list[str] = []

    async def tidy() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("tidy")

    ran: list[int] = []
    flaky = workers.start("unit-flaky", _loop([ValueError("bad value"), None], ran))
    workers.start("unit-tidy", tidy)
    await _until(lambda: len(ran) == 2)
    report = await workers.stop()
    assert cleaned == ["tidy"] and flaky.done()
    assert {r["state"] for r in report.values()} == {"stopped"}
    summary = [r.getMessage() for r in caplog.records if "while the server ran" in r.getMessage()]
    assert len(summary) == 1 and "unit-flaky failed 1 times" in summary[0]
    assert "ValueError: bad value" in summary[0]


async def test_replacing_a_running_worker_keeps_its_record() -> None:
    workers = Workers(first_delay=0.01)
    ran: list[int] = []
    first = workers.start("unit-replaced", _loop([RuntimeError("x")], ran))
    await _until(lambda: len(ran) == 2)
    with pytest.raises(RuntimeError, match="already running"):
        workers.start("unit-replaced", _loop([], ran))
    old = first.task
    second = workers.start("unit-replaced", _loop([], ran), replace=True)
    assert second is first and second.task is not old and second.failures == 1
    await _until(lambda: old is not None and old.done() and len(ran) == 3)
    assert second.state is WorkerState.RUNNING
    await workers.stop()


def test_a_failure_is_described_in_one_printable_line_without_the_statement() -> None:
    class Wrapped(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__(
                "(driver.Error) invalid\n[SQL: UPDATE devices SET x=$1]\n[parameters: ('s',)]"
            )
            self.orig = orig

    wrapped = Wrapped(ValueError('invalid byte sequence for encoding "UTF8": 0x00'))
    assert failure_reason(wrapped) == 'ValueError: invalid byte sequence for encoding "UTF8": 0x00'
    assert failure_reason(RuntimeError("a\x00b\ud800c")) == "RuntimeError: a\\x00b\\ud800c"
    assert failure_reason(KeyError()) == "KeyError"
    assert len(failure_reason(RuntimeError("x" * 1000))) == 200
