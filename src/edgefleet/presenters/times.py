"""The two timestamp forms of the answers."""

from __future__ import annotations

from datetime import UTC, datetime


def compat_time(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def iso_time(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
