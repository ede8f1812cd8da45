"""Task rules: wave sizes, thresholds, maintenance windows, result events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edgefleet.domain.tasks import (
    Completion,
    WaveCounts,
    Window,
    completion_for,
    event_outcome,
    event_progress,
    relay_status,
    wave_sizes,
    wave_verdict,
)
from edgefleet.errors import ValidationError


@pytest.mark.parametrize(
    ("spec", "total", "sizes"),
    [
        ([], 7, [7]),
        ([2, "30%"], 10, [2, 3, 5]),
        (["10%", "100%"], 25, [3, 22]),
        ([5, 5], 3, [3]),
        (["1%"], 1000, [10, 990]),
        ([1, 1, 1], 0, []),
    ],
)
def test_wave_sizes(spec: list[int | str], total: int, sizes: list[int]) -> None:
    assert wave_sizes(spec, total) == sizes


@pytest.mark.parametrize("bad", [0, -1, "0%", "101%", "x", "5 %%", True])
def test_bad_waves_are_refused(bad: int | str) -> None:
    with pytest.raises(ValidationError):
        wave_sizes([bad], 10)


def test_thresholds() -> None:
    def v(success: int, failure: int, active: int, size: int = 10) -> str:
        return wave_verdict(WaveCounts(size, success, failure, 0, active), 80, 20)

    assert v(0, 2, 8) == "wait"  # 20 % is not past 20 %
    assert v(0, 3, 7) == "abort"
    assert v(8, 0, 2) == "next"
    assert v(7, 2, 0) == "stuck"
    assert wave_verdict(WaveCounts(10, 0, 10, 0, 0), 0, None) == "next"


def test_windows_span_midnight_in_the_sites_zone() -> None:
    w = Window.parse(
        {"timezone": "Europe/Berlin", "days": ["Fri"], "start": "22:00", "end": "04:00"}
    )
    # Friday 2026-11-27 22:30 in Berlin is 21:30 UTC
    assert w.is_open(datetime(2026, 11, 27, 21, 30, tzinfo=UTC))
    assert w.is_open(datetime(2026, 11, 28, 2, 0, tzinfo=UTC))  # Saturday 03:00, Friday's night
    assert not w.is_open(datetime(2026, 11, 28, 3, 30, tzinfo=UTC))  # Saturday 04:30
    assert not w.is_open(datetime(2026, 11, 27, 20, 0, tzinfo=UTC))  # Friday 21:00
    assert not w.is_open(datetime(2026, 11, 26, 21, 30, tzinfo=UTC))  # Thursday night
    day = Window.parse({"days": ["mon"]})
    assert day.is_open(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    assert not day.is_open(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    for bad in ({"timezone": "Nowhere/City"}, {"days": ["funday"]}, {"start": "25:00"}):
        with pytest.raises(ValidationError):
            Window.parse(bad)


def test_result_events() -> None:
    ok = event_outcome(200, {"code": "FW_UPGRADE_SUCCESS", "version": "2.0"})
    assert ok is not None and ok.ok
    bad = event_outcome(500, {"code": "FW_UPGRADE_FAIL", "reason": "sha256 mismatch"})
    assert bad is not None and not bad.ok and "sha256 mismatch" in bad.detail
    assert event_outcome(200, {"progress": 40}) is None
    assert event_progress({"progress": 40.5}) == 40 and event_progress({"x": 1}) is None
    assert completion_for("post", "/system/reboot") is Completion.REBOOT
    assert completion_for("put", "/system/import") is Completion.REBOOT
    assert completion_for("post", "/system/firmware") is Completion.FIRMWARE
    assert completion_for("get", "/system/reboot") is Completion.RESPONSE


def test_relay_status_texts() -> None:
    assert relay_status("SUCCESS", 200, "") == "Success from CG"
    assert relay_status("FAILURE", 500, "") == "Failure from CG"
    assert relay_status("FAILURE", None, "timeout: no answer in time") == "Timeout"
    assert relay_status("FAILURE", None, "expired: …") == "Expired"
    assert relay_status("PENDING", None, "") == "Pending"
