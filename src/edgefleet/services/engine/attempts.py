"""One execution's attempts: what an outcome does to its row (success, another attempt, or
failure), shared by the dispatcher's time-outs and the result recorder."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter

from edgefleet.db.repos.tasks import HistoryRow
from edgefleet.db.tables import Execution, Task
from edgefleet.domain.tasks import Outcome, TaskKind, TaskState

FINISHED = Counter("edgefleet_task_executions_finished_total", "Executions finished", ["state"])


@dataclass
class Change:
    """Pending changes to one execution within a batch, written in bulk afterwards."""

    row: Execution
    task: Task
    values: dict[str, Any] = field(default_factory=dict)

    def set(self, **values: Any) -> None:
        for k, v in values.items():
            setattr(self.row, k, v)
        self.values.update(values)


def new_message_id() -> str:
    return str(uuidlib.uuid4())


def retries_allowed(task: Task) -> int:
    """Group tasks retry only under the ``retry`` policy; rollouts and jobs as configured."""
    if task.kind == TaskKind.GROUP.value and task.apply_policy != "retry":
        return 0
    return task.retry_times


def finish_attempt(c: Change, outcome: Outcome, now: datetime, history: list[HistoryRow]) -> None:
    """Record one attempt's outcome: SUCCESS, another attempt later, or FAILURE."""
    row, task = c.row, c.task
    common: dict[str, Any] = {"updated_at": now, "detail": outcome.detail[:500]}
    if outcome.code is not None:
        common["code"] = outcome.code
    if outcome.data is not None:
        common["result"] = outcome.data
    if outcome.ok:
        c.set(
            state=TaskState.SUCCESS.value,
            success=True,
            due_at=None,
            finished_at=now,
            progress=100 if row.progress is not None else None,
            **common,
        )
    elif row.attempts <= retries_allowed(task):
        c.set(
            state=TaskState.PENDING.value,
            due_at=now + timedelta(seconds=task.retry_interval),
            message_id=new_message_id(),
            sent_at=None,
            acked_at=None,
            **common,
        )
    else:
        c.set(state=TaskState.FAILURE.value, due_at=None, finished_at=now, **common)
    history.append(HistoryRow(row.id, now, row.state, outcome.detail, outcome.code))
    if row.state != TaskState.PENDING.value:
        FINISHED.labels(row.state).inc()
