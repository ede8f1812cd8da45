"""The input rules every database holds (domain/limits.py) and the stored-JSON reader."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from edgefleet import jsontree
from edgefleet.db.engine import load_json
from edgefleet.domain.limits import (
    CUT,
    INT64_MAX,
    MAX_JSON_DEPTH,
    SHOWN_JSON_DEPTH,
    json_problem,
    prune,
    storable,
    text_problem,
    utc_time,
)
from edgefleet.errors import MessageError
from edgefleet.protocol import messages


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"n": value}
    return value


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("plain", None),
        ("Zürich 😀", None),
        ("a\x00b", "NUL"),
        ("x\ud800", "surrogate"),
        ("\udfff", "surrogate"),
    ],
)
def test_text_problems_name_nul_and_lone_surrogates(text: str, problem: str | None) -> None:
    found = text_problem(text)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_json_nests_up_to_the_limit_and_no_deeper() -> None:
    assert json_problem(nested(MAX_JSON_DEPTH)) is None
    path, reason = json_problem(nested(MAX_JSON_DEPTH + 1)) or ((), "")
    assert "deeper than 32" in reason and path == ("n",) * MAX_JSON_DEPTH
    # a walk, not a recursion: deeper than the interpreter recurses is still answered
    assert json_problem(nested(5000)) is not None


@pytest.mark.parametrize(
    ("doc", "where", "says"),
    [
        ({"a": [1, "ok", "x\x00"]}, ("a", 2), "NUL"),
        ({"a": {"k\x00": 1}}, ("a",), "a key contains a NUL"),
        ({"a": float("nan")}, ("a",), "not finite"),
        ([1, float("inf")], (1,), "not finite"),
        ({"n": INT64_MAX + 1}, ("n",), "integer outside"),
    ],
)
def test_json_problems_say_where(doc: Any, where: tuple[Any, ...], says: str) -> None:
    found = json_problem(doc)
    assert found is not None and found[0] == where and says in found[1]


def test_json_within_the_rules_passes() -> None:
    doc = {"a": [1, -(2**63), INT64_MAX, 1.5e300, True, None, "ü"], "b": {}}
    assert json_problem(doc) is None


def test_times_are_taken_to_utc_within_the_range() -> None:
    assert utc_time(datetime(2026, 1, 1, 8)) == datetime(2026, 1, 1, 8, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    assert utc_time(datetime(2026, 1, 1, 8, tzinfo=plus2)) == datetime(2026, 1, 1, 6, tzinfo=UTC)
    minus14 = timezone(timedelta(hours=-14))
    for bad in (
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=minus14),  # overflows on the way to UTC
        datetime(9999, 6, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(1, 6, 1),
    ):
        with pytest.raises(ValueError, match="between"):
            utc_time(bad)


def test_prune_cuts_what_is_shown_deeper_than_the_limit() -> None:
    small = {"a": [1, {"b": 2}]}
    assert prune(small) is small
    cut = prune(nested(300))
    assert depth(cut) == SHOWN_JSON_DEPTH
    inner = cut
    for _ in range(SHOWN_JSON_DEPTH - 1):
        inner = inner["n"]
    assert inner == {"n": CUT}


def test_stored_json_reads_non_finite_as_null_and_cuts_deep_documents() -> None:
    assert load_json('{"x": NaN, "y": [Infinity, -Infinity], "z": 1}') == {
        "x": None,
        "y": [None, None],
        "z": 1,
    }
    assert depth(load_json(json.dumps(nested(300)))) == SHOWN_JSON_DEPTH
    assert load_json("[" * 100_000 + "]" * 100_000) == CUT  # past what the parser recurses


def test_storable_text_replaces_what_no_database_keeps() -> None:
    assert storable("a\x00b\ud800c😀") == "a\ufffdb\ufffdc😀"
    assert text_problem(storable("x\udfff\x00")) is None


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ({"a": [1, "x\x00"]}, "nul"),
        ({"k\ud800": 1}, "surrogate"),
        ({"a": {"b": float("inf")}}, "number"),
        ({"n": -(2**63) - 1}, "number"),
        (nested(MAX_JSON_DEPTH + 1), "too_deep"),
    ],
)
def test_the_api_and_the_gateway_protocol_refuse_the_same_json(doc: Any, code: str) -> None:
    """One set of rules (jsontree): what a REST body may not hold, a gateway's message may
    not either, and the protocol names it by the same code (its metric label)."""
    assert json_problem(doc) is not None
    found = jsontree.problem(doc)
    assert found is not None and found.code == code
    with pytest.raises(MessageError) as refused:
        messages._check_tree(doc)
    assert refused.value.reason == code
    assert json_problem({"a": [doc]}) is not None  # and anywhere inside a document
