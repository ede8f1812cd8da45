"""Who is told of committed changes: the event service listens to execution history and
task state; an observer's bug never stops the engine."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edgefleet.db.repos.tasks import HistoryRow
from edgefleet.db.tables import Task

log = logging.getLogger(__name__)


class Observers:
    def __init__(self) -> None:
        self.history: list[Callable[[Sequence[HistoryRow]], None]] = []
        """Told every committed batch of execution state changes."""
        self.tasks: list[Callable[[Task], None]] = []
        """Told every committed change of a task's own state."""

    def announce(self, history: Sequence[HistoryRow], tasks: Sequence[Task] = ()) -> None:
        for observe in self.history if history else ():
            try:
                observe(history)
            except Exception:  # an observer's bug must not stop the engine
                log.exception("history observer failed")
        for task in tasks:
            for observe_task in self.tasks:
                try:
                    observe_task(task)
                except Exception:
                    log.exception("task observer failed")
