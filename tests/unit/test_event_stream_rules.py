"""The live stream's bookkeeping and the event filter, without a database: the watermark
that waits for ids committed out of order, and the filter rules the stream applies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.domain.eventfilter import EventFilter, matches, parse_event_id, parse_filter
from edgefleet.domain.events import AlarmState, Severity
from edgefleet.errors import ValidationError
from edgefleet.services.eventfeed import Position, Watermark

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEV_A = "11111111-1111-4111-8111-111111111111"
DEV_B = "22222222-2222-4222-8222-222222222222"


# --- watermark ---------------------------------------------------------------------------------


def test_ids_in_order_are_taken_once_without_gaps() -> None:
    mark = Watermark(0, grace=5)
    assert mark.observe([1, 2, 3], now=0) == [1, 2, 3]
    assert mark.observe([3], now=0) == []
    assert mark.high == 3 and mark.gaps == []


def test_a_hole_is_a_gap_until_its_id_appears_when_committed_late() -> None:
    mark = Watermark(0, grace=5)
    assert mark.observe([1, 4], now=0) == [1, 4]
    assert mark.gaps == [(2, 3)]
    assert mark.observe([3], now=1) == [3]
    assert mark.gaps == [(2, 2)]
    assert mark.observe([2, 3, 4], now=2) == [2]
    assert mark.gaps == []


def test_a_gap_inside_a_range_splits_it_and_keeps_its_deadline() -> None:
    mark = Watermark(0, grace=5)
    mark.observe([10], now=0)
    mark.observe([5], now=4)
    assert mark.gaps == [(1, 4), (6, 9)]
    assert mark.expire(now=4.9) == 0
    assert mark.expire(now=5.0) == 8
    assert mark.gaps == []


def test_a_gap_given_up_is_never_taken_later() -> None:
    mark = Watermark(0, grace=5)
    mark.observe([3], now=0)
    assert mark.expire(now=6) == 2
    assert mark.observe([1, 2], now=7) == []


def test_the_lowest_gaps_go_first_past_the_limit() -> None:
    mark = Watermark(0, grace=5, max_gaps=2)
    mark.observe([2, 4, 6], now=0)
    assert mark.gaps == [(3, 3), (5, 5)]


def test_starting_at_the_newest_ids_treats_their_holes_as_gaps() -> None:
    mark = Watermark.starting_at([10, 7, 8], now=0, grace=5)
    assert mark.high == 10 and mark.gaps == [(9, 9)]
    assert Watermark.starting_at([], now=0).high == 0


def test_a_position_has_passed_what_was_handed_out() -> None:
    pos = Position(10, ((3, 4), (8, 8)))
    assert [i for i in range(1, 13) if pos.passed(i)] == [1, 2, 5, 6, 7, 9, 10]


@given(
    st.permutations(list(range(1, 41))),
    st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=40),
)
def test_any_commit_order_gives_each_id_once(order: list[int], sizes: list[int]) -> None:
    """Ids becoming visible in any order, in batches of any size, within the grace period:
    every id is taken exactly once and nothing is left waiting."""
    mark = Watermark(0, grace=1000)
    visible: set[int] = set()
    taken: list[int] = []
    rest, i = list(order), 0
    while rest:
        n = sizes[i % len(sizes)]
        i += 1
        visible.update(rest[:n])
        rest = rest[n:]
        # what a poll returns: ids above high, and ids inside the gaps
        polled = [v for v in visible if v > mark.high or any(lo <= v <= hi for lo, hi in mark.gaps)]
        taken.extend(mark.observe(polled, now=i))
    assert sorted(taken) == list(range(1, 41))
    assert mark.gaps == [] and mark.high == 40


# --- the filter ---------------------------------------------------------------------------------


@dataclass
class Ev:
    at: datetime = T0
    type: str = "gateway_event"
    device_uuid: str | None = DEV_A
    resource: str = "/system/firmware"
    text: str = "POST /system/firmware FW_UPGRADE_FAIL"
    severity: str | None = None
    acked_at: datetime | None = None
    cleared_at: datetime | None = None


def test_an_empty_filter_takes_everything() -> None:
    assert matches(EventFilter(), Ev(device_uuid=None))


@pytest.mark.parametrize(
    ("f", "event", "expected"),
    [
        (EventFilter(devices=frozenset({DEV_A})), Ev(), True),
        (EventFilter(devices=frozenset({DEV_B})), Ev(), False),
        (EventFilter(devices=frozenset({DEV_B})), Ev(device_uuid=None), False),
        (EventFilter(types=frozenset({"gateway_event"})), Ev(), True),
        (EventFilter(types=frozenset({"device_online"})), Ev(), False),
        (EventFilter(resource="/system/"), Ev(), True),
        (EventFilter(resource="/System/"), Ev(), False),
        (EventFilter(severity=Severity.MAJOR), Ev(severity="critical"), True),
        (EventFilter(severity=Severity.MAJOR), Ev(severity="major"), True),
        (EventFilter(severity=Severity.MAJOR), Ev(severity="warning"), False),
        (EventFilter(severity=Severity.WARNING), Ev(), False),
        (EventFilter(since=T0), Ev(), True),
        (EventFilter(since=T0 + timedelta(seconds=1)), Ev(), False),
        (EventFilter(until=T0), Ev(), False),
        (EventFilter(until=T0 + timedelta(seconds=1)), Ev(), True),
        (EventFilter(q="fw_upgrade"), Ev(), True),
        (EventFilter(q="SYSTEM/FIRM"), Ev(text=""), True),
        (EventFilter(q="reboot"), Ev(), False),
    ],
)
def test_each_condition(f: EventFilter, event: Ev, expected: bool) -> None:
    assert matches(f, event) is expected


@pytest.mark.parametrize(
    ("acked", "cleared", "states"),
    [
        (False, False, {AlarmState.OPEN, AlarmState.UNACKNOWLEDGED}),
        (True, False, {AlarmState.OPEN, AlarmState.ACKNOWLEDGED}),
        (True, True, {AlarmState.CLEARED}),
    ],
)
def test_alarm_states(acked: bool, cleared: bool, states: set[AlarmState]) -> None:
    e = Ev(severity="major", acked_at=T0 if acked else None, cleared_at=T0 if cleared else None)
    assert {s for s in AlarmState if matches(EventFilter(alarm=s), e)} == states
    assert not any(matches(EventFilter(alarm=s), Ev()) for s in AlarmState)


def test_a_group_takes_its_members_only() -> None:
    f = EventFilter(group_id=3)
    assert matches(f, Ev(), members=frozenset({DEV_A}))
    assert not matches(f, Ev(), members=frozenset({DEV_B}))
    assert not matches(f, Ev(device_uuid=None), members=frozenset({DEV_A}))


def test_query_values_are_parsed_and_times_without_offset_are_utc() -> None:
    f = parse_filter(
        devices=[DEV_A.upper()],
        group="4",
        types=["device_offline"],
        severity="MAJOR",
        alarm="open",
        since="2026-03-01T12:00:00",
        until="2026-03-01T14:00:00+01:00",
    )
    assert f.devices == frozenset({DEV_A}) and f.group_id == 4
    assert f.types == frozenset({"device_offline"})
    assert f.severity is Severity.MAJOR and f.alarm is AlarmState.OPEN
    assert f.since == T0 and f.until == T0 + timedelta(hours=1)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"types": ["nope"]}, "event type"),
        ({"severity": "info"}, "severity"),
        ({"alarm": "maybe"}, "alarm state"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "before"),
        ({"group": "one"}, "group"),
        ({"devices": ["gw-1"]}, "device"),
        ({"q": "x" * 201}, "q"),
    ],
)
def test_bad_values_name_what_is_wrong(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(ValidationError, match=word):
        parse_filter(**kwargs)  # type: ignore[arg-type]


def test_event_ids() -> None:
    assert parse_event_id(" 42 ", "after") == 42
    for bad in ("x", "-1", "4.2"):
        with pytest.raises(ValidationError, match="after"):
            parse_event_id(bad, "after")
