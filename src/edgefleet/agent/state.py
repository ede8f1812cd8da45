"""Executed task ids and their answers, persisted so a redelivery is never run twice.

A task is *claimed* (a row without an answer) before its handler runs and *finished* (the
answer stored) after. After a restart, a redelivered task finds either its stored answer,
sent again unchanged, or a claim without an answer: the agent stopped while running it, and
it is answered 409 rather than run a second time. The newest ``limit`` tasks are kept.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edgefleet.protocol.messages import RequestMessage, ResponseMessage

DEFAULT_LIMIT = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,
    resource TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    response TEXT
)
"""


@dataclass(frozen=True)
class Claim:
    """``new``: run it; otherwise ``response`` is the answer to send again."""

    new: bool
    response: ResponseMessage | None = None


class TaskStore:
    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.path = path
        self.limit = limit
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TaskStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def claim(self, request: RequestMessage, running: bool = False) -> Claim:
        """Claim ``request.task_id`` for running, or return the answer it already has.

        ``running`` tells that this process is running the task right now (the caller waits
        for it instead); an unanswered claim not running here was interrupted by a restart.
        """
        row = self._db.execute(
            "SELECT response FROM tasks WHERE task_id = ?", (request.task_id,)
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO tasks (task_id, method, resource, claimed_at) VALUES (?, ?, ?, ?)",
                (request.task_id, request.method, request.resource, time.time()),
            )
            return Claim(new=True)
        if row[0] is not None:
            try:
                return Claim(new=False, response=ResponseMessage.model_validate_json(row[0]))
            except ValidationError:
                pass  # a damaged row: answer as interrupted below
        if running:
            return Claim(new=False)
        response = ResponseMessage(
            task_id=request.task_id,
            method=request.method,
            resource=request.resource,
            code=409,
            data={"message": "this task was interrupted by an agent restart; not run again"},
            sign=["edgefleet-agent"],
        )
        self.finish(response)
        return Claim(new=False, response=response)

    def finish(self, response: ResponseMessage) -> None:
        body = response.model_dump_json()
        updated = self._db.execute(
            "UPDATE tasks SET response = ? WHERE task_id = ?", (body, response.task_id)
        ).rowcount
        if not updated:
            self._db.execute(
                "INSERT INTO tasks (task_id, method, resource, claimed_at, response) "
                "VALUES (?, ?, ?, ?, ?)",
                (response.task_id, response.method, response.resource, time.time(), body),
            )
        self._db.execute(
            "DELETE FROM tasks WHERE seq NOT IN (SELECT seq FROM tasks ORDER BY seq DESC LIMIT ?)",
            (self.limit,),
        )

    def answer(self, task_id: str) -> ResponseMessage | None:
        row = self._db.execute(
            "SELECT response FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return ResponseMessage.model_validate_json(row[0])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
