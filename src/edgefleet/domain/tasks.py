"""Tasks and their executions: states, policies, waves, windows and thresholds.

A *task* is one request (``method``, ``resource``, ``data``) meant for many gateways: a
ThingsPro group task, a ``deviceJobRelay`` job (one gateway) or a staged rollout. Each
gateway's share is an *execution*, the unit the task service dispatches, retries and
records. Plain rules here; storage and transport live elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgefleet.errors import ValidationError


class TaskState(StrEnum):
    """States of an execution (the original's five) and of a task (those plus three)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"
    PAUSED = "PAUSED"
    """Task only: no new execution starts; those in flight finish."""
    ABORTED = "ABORTED"
    """Task only: stopped by hand or past its error threshold; what had not started is
    revoked, what was in flight finished."""


TERMINAL = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})
ACTIVE = frozenset({TaskState.PENDING, TaskState.RUNNING})
COMPLETED = frozenset({TaskState.SUCCESS, TaskState.FAILURE})
TASK_OPEN = frozenset({TaskState.PENDING, TaskState.RUNNING, TaskState.PAUSED})
"""A task in one of these states still holds its group (one open task per group)."""


class TaskKind(StrEnum):
    GROUP = "group"
    RELAY = "relay"
    ROLLOUT = "rollout"


class ApplyPolicy(StrEnum):
    """``applyPolicy`` of ThingsPro group tasks. The original's enum is unpublished beyond
    ``none``; both spellings of the scheduled policy are accepted and echoed back."""

    NONE = "none"
    RETRY = "retry"
    SCHEDULE = "schedule"
    SCHEDULED = "scheduled"


class Completion(StrEnum):
    """When an execution counts as done."""

    RESPONSE = "response"
    """At the gateway's answer (code < 300)."""
    REBOOT = "reboot"
    """At the gateway's return online after a 2xx answer (reboot, configuration import)."""
    FIRMWARE = "firmware"
    """At the gateway's ``FW_UPGRADE_SUCCESS``/``FAIL`` event after a 2xx answer, or at its
    return online with the expected ``softwareVersion``."""


def completion_for(method: str, resource: str) -> Completion:
    path = resource.split("?", 1)[0].rstrip("/")
    if method == "post" and path == "/system/reboot":
        return Completion.REBOOT
    if method == "put" and path == "/system/import":
        return Completion.REBOOT
    if method == "post" and path == "/system/firmware":
        return Completion.FIRMWARE
    return Completion.RESPONSE


DEFAULT_COMPLETION_SECONDS = {
    Completion.RESPONSE: 0,
    Completion.REBOOT: 600,
    Completion.FIRMWARE: 3600,
}
"""Time a gateway has, after acknowledging, to come back or report (per attempt)."""

RETRY_INTERVAL = 10.0
"""Seconds between attempts under the retry policy (ThingsPro's handbook: every 10 s)."""


# --- outcomes of one attempt -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``ok`` or not, and why (for the history)."""

    ok: bool
    detail: str
    code: int | None = None
    data: Any = None


def response_outcome(code: int) -> bool:
    return 200 <= code < 300


SUCCESS_CODE_SUFFIX = "_SUCCESS"
FAIL_CODE_SUFFIX = "_FAIL"


def event_outcome(code: int | None, data: Any) -> Outcome | None:
    """A result event (``{"code": "FW_UPGRADE_SUCCESS"|"…_FAIL", …}``) as an outcome;
    ``None`` for a progress report or anything else."""
    result = data.get("code") if isinstance(data, dict) else None
    if isinstance(result, str) and result.endswith(SUCCESS_CODE_SUFFIX):
        return Outcome(True, result, code, data)
    if isinstance(result, str) and result.endswith(FAIL_CODE_SUFFIX):
        reason = data.get("reason") if isinstance(data, dict) else None
        return Outcome(False, f"{result}: {reason}" if reason else result, code, data)
    if code is not None and code >= 400 and not (isinstance(data, dict) and "progress" in data):
        return Outcome(False, f"gateway reported code {code}", code, data)
    return None


def event_progress(data: Any) -> int | None:
    """The percentage in a progress event, when there is one."""
    if isinstance(data, dict):
        p = data.get("progress")
        if isinstance(p, int | float) and not isinstance(p, bool):
            return max(0, min(100, int(p)))
    return None


def may_retry(attempts: int, retry_times: int) -> bool:
    """``attempts`` made so far; the first one is not a retry."""
    return attempts <= retry_times


# --- waves -----------------------------------------------------------------------------------


def wave_sizes(spec: list[int | str], total: int) -> list[int]:
    """Split ``total`` devices into ordered waves.

    Each entry is a count (``10``) or a share of the whole (``"25%"``), rounded up. Waves
    take devices in order; an entry larger than what is left takes the rest; devices left
    after the last entry form one more wave. Empty waves are dropped.
    """
    for entry in spec:  # every entry is checked, even when there is nobody to split
        _wave_entry(entry, max(total, 1))
    sizes: list[int] = []
    left = total
    for entry in spec:
        if left == 0:
            break
        n = _wave_entry(entry, total)
        n = min(n, left)
        if n:
            sizes.append(n)
            left -= n
    if left:
        sizes.append(left)
    return sizes


def _wave_entry(entry: int | str, total: int) -> int:
    if isinstance(entry, bool):
        raise ValidationError('a wave is a count or a percentage like "25%"')
    if isinstance(entry, int):
        if entry < 1:
            raise ValidationError("a wave holds at least 1 device")
        return entry
    text = entry.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            pct = -1
        if not 0 < pct <= 100:
            raise ValidationError(f"wave {entry!r}: a percentage must be in (0, 100]")
        return max(1, math.ceil(total * pct / 100))
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValidationError(f'wave {entry!r}: a count or a percentage like "25%"')


def assign_waves(sizes: list[int]) -> list[int]:
    """The wave index of each device, in order."""
    return [i for i, n in enumerate(sizes) for _ in range(n)]


@dataclass(frozen=True)
class WaveCounts:
    size: int
    success: int
    failure: int
    revoked: int
    active: int


def needed(threshold_pct: int, size: int) -> int:
    return math.ceil(size * threshold_pct / 100)


def wave_verdict(c: WaveCounts, success_pct: int, error_pct: int | None) -> str:
    """``"abort"`` past the error threshold, ``"next"`` once the success threshold is met,
    ``"stuck"`` when the wave finished below it, else ``"wait"``."""
    if error_pct is not None and c.size and c.failure * 100 > error_pct * c.size:
        return "abort"
    if c.success >= needed(success_pct, c.size):
        return "next"
    if c.active == 0:
        return "stuck"
    return "wait"


# --- maintenance windows ---------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Window:
    """Days and hours, in a site's time zone, in which new executions may start.

    ``start`` after ``end`` spans midnight (22:00-04:00 belongs to the day it starts on).
    """

    timezone: str
    days: tuple[str, ...]
    start: time
    end: time

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Window:
        tz = str(doc.get("timezone") or "UTC")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValidationError(f"window: unknown time zone {tz!r}") from exc
        days = tuple(str(d).lower()[:3] for d in (doc.get("days") or DAYS))
        bad = [d for d in days if d not in DAYS]
        if bad or not days:
            raise ValidationError(f"window: days are {', '.join(DAYS)}")
        try:
            start = time.fromisoformat(str(doc.get("start", "00:00")))
            end = time.fromisoformat(str(doc.get("end", "00:00")))
        except ValueError as exc:
            raise ValidationError('window: start and end are times like "22:00"') from exc
        return cls(tz, days, start, end)

    def to_doc(self) -> dict[str, Any]:
        return {
            "timezone": self.timezone,
            "days": list(self.days),
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
        }

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.timezone))
        t = local.time().replace(tzinfo=None)
        today = DAYS[local.weekday()]
        yesterday = DAYS[(local - timedelta(days=1)).weekday()]
        if self.start == self.end:  # the whole day
            return today in self.days
        if self.start < self.end:
            return today in self.days and self.start <= t < self.end
        return (today in self.days and t >= self.start) or (yesterday in self.days and t < self.end)


# --- relay job status (deviceJobRelay) -------------------------------------------------------


def relay_status(state: str, code: int | None, detail: str) -> str:
    """The ``status`` text of a ``deviceJobRelay`` job (the spec shows "Success from CG")."""
    if state == TaskState.SUCCESS:
        return "Success from CG"
    if state == TaskState.FAILURE:
        if code is not None:
            return "Failure from CG"
        return "Expired" if detail.startswith("expired") else "Timeout"
    if state == TaskState.REVOKED:
        return "Revoked"
    if state == TaskState.RUNNING:
        return "Sent to CG"
    return "Pending"
