"""The supervisor of a server process's background loops (*workers*).

Every long-running loop — broker link, presence writer, sweep and heal, task engine and its
results writer, event writer, retention, file expiry, webhook dispatcher, the embedded
broker's watchers, the live-event tailer — is started through one ``Workers`` and nothing
else. Each runs as an asyncio task named after it. The loops keep their own handling of
expected trouble (a database outage is waited out, a refused row set aside); the supervisor
is the last line:

- an exception that escapes a loop is logged once (message and stack), counted in
  ``edgefleet_worker_failures_total{worker}``, and the loop is started again after a
  jittered exponential backoff (``first_delay`` doubling up to ``max_delay``; back to
  ``first_delay`` once a run has lasted ``healthy_after`` seconds);
- a loop that returns although it should run until stopped (``forever``) is a failure too;
  one that may end (``forever=False``: a reconciliation, the tailer without streams) is
  *finished* when it returns;
- a worker is **failing** when it failed ``failing_after`` times in a row with no run
  lasting ``healthy_after`` seconds between; ``/readyz`` is not ready while one is, and
  ready again once a restarted run has lasted ``healthy_after`` seconds;
- ``stop`` cancels them all and logs which failed while the process ran, and how.

The state of each worker is exported as ``edgefleet_worker_state{worker, edgefleet_worker_state}``
(a Prometheus enum: 1 for the current state).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from prometheus_client import Counter
from prometheus_client import Enum as EnumMetric

from edgefleet.clock import utcnow

log = logging.getLogger(__name__)


class WorkerState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"
    """It failed and waits to be started again."""
    FINISHED = "finished"
    """A worker that may end (``forever=False``) returned."""
    STOPPED = "stopped"
    """Cancelled: the server is stopping, or its owner stopped it."""


FAILURES = Counter(
    "edgefleet_worker_failures_total",
    "Background loops that raised, or returned when they should run until stopped",
    ["worker"],
)
STATE = EnumMetric(
    "edgefleet_worker_state",
    "The state of each background loop",
    ["worker"],
    states=[s.value for s in WorkerState],
)

Loop = Callable[[], Awaitable[None]]
"""What a worker runs: called again at each restart."""

REASON_LIMIT = 200


def failure_reason(exc: BaseException) -> str:
    """One printable line naming an error: its class and the first line of its message.

    A driver error wrapped by SQLAlchemy is described by the driver's own error, without
    the statement and parameters that follow it (they may carry data)."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return printable(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def printable(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, control characters and lone surrogates escaped
    (``\\x00``, ``\\ud800``): safe in a log line or a JSON answer, whatever a peer sent."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return out[:limit]


@dataclass(eq=False)
class Worker:
    """One supervised loop and what happened to it (kept across restarts)."""

    name: str
    forever: bool
    state: WorkerState = WorkerState.RUNNING
    failures: int = 0
    """Failures since the process started."""
    streak: int = 0
    """Failures in a row, no run lasting ``healthy_after`` between."""
    restarts: int = 0
    last_error: str | None = None
    last_failure_at: datetime | None = None
    started: float = 0.0
    """Loop time the current run began."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def stop(self) -> None:
        """Cancel it and wait until it has stopped (nothing if it is not running)."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.state in (WorkerState.RUNNING, WorkerState.BACKOFF):
            _set(self, WorkerState.STOPPED)


def _set(worker: Worker, state: WorkerState) -> None:
    worker.state = state
    STATE.labels(worker.name).state(state.value)


class Workers:
    """Starts, restarts, reports and stops the background loops of one process."""

    def __init__(
        self,
        *,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        healthy_after: float = 60.0,
        failing_after: int = 3,
        stop_timeout: float = 10.0,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.healthy_after = healthy_after
        self.failing_after = failing_after
        self.stop_timeout = stop_timeout
        self._workers: dict[str, Worker] = {}

    def start(self, name: str, run: Loop, *, forever: bool = True, replace: bool = False) -> Worker:
        """Run ``run`` as the worker ``name`` until stopped. A name still running is an
        error unless ``replace``: then the running one is cancelled (not awaited) and this
        one takes its place and its record."""
        worker = self._workers.get(name)
        if worker is None:
            worker = self._workers[name] = Worker(name, forever)
        elif not worker.done():
            if not replace:
                raise RuntimeError(f"worker {name} is already running")
            assert worker.task is not None
            worker.task.cancel()
        worker.forever = forever
        worker.streak = 0
        _set(worker, WorkerState.RUNNING)
        worker.task = asyncio.create_task(self._supervise(worker, run), name=name)
        return worker

    def get(self, name: str) -> Worker | None:
        return self._workers.get(name)

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self._workers.values()))

    def __len__(self) -> int:
        return len(self._workers)

    def failing(self, worker: Worker) -> bool:
        """Failed ``failing_after`` times in a row, and the current run (if any) has not yet
        lasted ``healthy_after`` seconds."""
        if worker.streak < self.failing_after or worker.state is WorkerState.STOPPED:
            return False
        if worker.state is WorkerState.RUNNING:
            ran = asyncio.get_running_loop().time() - worker.started
            return ran < self.healthy_after
        return worker.state is WorkerState.BACKOFF

    @property
    def ready(self) -> bool:
        return not any(self.failing(w) for w in self._workers.values())

    def report(self) -> dict[str, dict[str, Any]]:
        """Each worker's state, counts and last error (``/readyz``)."""
        return {
            w.name: {
                "state": w.state.value,
                "failing": self.failing(w),
                "failures": w.failures,
                "restarts": w.restarts,
                "lastError": w.last_error,
                "lastFailureAt": w.last_failure_at.isoformat() if w.last_failure_at else None,
            }
            for w in sorted(self._workers.values(), key=lambda w: w.name)
        }

    async def _supervise(self, w: Worker, run: Loop) -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        delay = self.first_delay
        while True:
            w.started = loop.time()
            error: BaseException | None = None
            try:
                await run()
            except asyncio.CancelledError as exc:
                if me.cancelling():
                    raise  # stopped, or replaced
                error = exc  # a cancelled future awaited inside the loop: not a stop
            except Exception as exc:
                error = exc
            if w.task is not me:
                return  # replaced while it ended
            if error is None and not w.forever:
                _set(w, WorkerState.FINISHED)
                return
            if loop.time() - w.started >= self.healthy_after:
                delay, w.streak = self.first_delay, 0
            w.failures += 1
            w.streak += 1
            FAILURES.labels(w.name).inc()
            w.last_failure_at = utcnow()
            wait = delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
            if error is None:
                w.last_error = "returned, but it should run until stopped"
                log.error("worker %s %s; restarting in %.1f s", w.name, w.last_error, wait)
            else:
                w.last_error = failure_reason(error)
                log.error(
                    "worker %s failed: %s; restarting in %.1f s",
                    w.name,
                    w.last_error,
                    wait,
                    exc_info=error,
                )
            _set(w, WorkerState.BACKOFF)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.max_delay)
            w.restarts += 1
            _set(w, WorkerState.RUNNING)

    async def stop(self) -> dict[str, dict[str, Any]]:
        """Cancel every worker, wait (at most ``stop_timeout`` s) until they have stopped,
        and log those that failed while the process ran. Returns the final report."""
        running = [w for w in self._workers.values() if not w.done()]
        for w in running:
            assert w.task is not None
            w.task.cancel()
        tasks = [w.task for w in running if w.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for w in running:
                if w.task in pending:
                    log.error("worker %s did not stop within %g s", w.name, self.stop_timeout)
                elif w.task is not None and not w.task.cancelled() and w.task.exception():
                    log.error(
                        "worker %s did not stop cleanly: %s",
                        w.name,
                        failure_reason(w.task.exception() or Exception()),
                    )
        for w in self._workers.values():
            if w.state in (WorkerState.RUNNING, WorkerState.BACKOFF):
                _set(w, WorkerState.STOPPED)
            if w.failures:
                log.warning(
                    "worker %s failed %d times while the server ran (last at %s: %s)",
                    w.name,
                    w.failures,
                    w.last_failure_at.isoformat() if w.last_failure_at else "?",
                    w.last_error,
                )
        return self.report()
