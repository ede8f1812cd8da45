"""Task states shared by group tasks and their per-device records."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


TERMINAL = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})
ACTIVE = frozenset({TaskState.PENDING, TaskState.RUNNING})
COMPLETED = frozenset({TaskState.SUCCESS, TaskState.FAILURE})
