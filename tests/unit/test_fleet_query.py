"""The fleet query language: grammar, precedence, field rules, errors, round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.domain.query import And, Compare, Has, HasTag, InList, Node, Not, Or, parse, render
from edgefleet.errors import QuerySyntaxError


def test_the_documented_examples() -> None:
    assert parse('model = "UC-8112" and softwareVersion < "2.4" and tag:line-3') == And(
        (
            Compare("model", "=", "UC-8112"),
            Compare("softwareVersion", "<", "2.4"),
            HasTag("line-3"),
        )
    )
    assert parse(
        'status = online and (group = "plant-a" or attr.site ~ "berlin") and not tag:retired'
    ) == And(
        (
            Compare("status", "=", "online"),
            Or((Compare("group", "=", "plant-a"), Compare("attr.site", "~", "berlin"))),
            Not(HasTag("retired")),
        )
    )
    assert parse('mac in ["0090e8112233", "00:90:E8:11:22:34"]') == InList(
        "mac", ("0090e8112233", "00:90:E8:11:22:34")
    )


def test_precedence_not_then_and_then_or() -> None:
    assert parse("name = a or name = b and not name = c") == Or(
        (
            Compare("name", "=", "a"),
            And((Compare("name", "=", "b"), Not(Compare("name", "=", "c")))),
        )
    )
    assert parse("(name = a or name = b) and name = c") == And(
        (Or((Compare("name", "=", "a"), Compare("name", "=", "b"))), Compare("name", "=", "c"))
    )


def test_aliases_keywords_and_values() -> None:
    assert parse("displayName = x") == parse("NAME = x") == Compare("name", "=", "x")
    assert parse("firmware >= 2.4") == Compare("softwareVersion", ">=", 2.4)
    assert parse("groupId = 3 AND has attr.rack") == And(
        (Compare("groupId", "=", 3), Has("attr.rack"))
    )
    assert parse("attr.enabled = true") == Compare("attr.enabled", "=", True)
    assert parse('name = "a \\"quoted\\" name"') == Compare("name", "=", 'a "quoted" name')
    assert parse("name = notes") == Compare("name", "=", "notes")  # keyword prefix, not keyword


@pytest.mark.parametrize(
    ("query", "message", "column"),
    [
        ("model = ", "unexpected end", 8),
        ("colour = red", "unknown field 'colour'", 1),
        ("status < online", "status cannot be compared with <", 1),
        ("status = broken", "status is one of created, online, offline", 1),
        ('model > "x"', "model cannot be compared with >", 1),
        ("groupId = abc", "groupId needs a whole number", 1),
        ('createdAt > "yesterday"', "is not an ISO-8601 time", 1),
        ("model in []", "needs at least one value", 1),
        ('model = "x" junk', "unexpected 'junk'", 13),
        ("(model = x", "unexpected end", 11),
        ("model = x $", "unexpected '$'", 11),
        ("tag:", "unexpected", None),
    ],
)
def test_errors_say_what_and_where(query: str, message: str, column: int | None) -> None:
    with pytest.raises(QuerySyntaxError) as err:
        parse(query)
    assert message in str(err.value)
    if column is not None:
        assert err.value.column == column


def test_limits() -> None:
    with pytest.raises(QuerySyntaxError, match="empty"):
        parse("   ")
    with pytest.raises(QuerySyntaxError, match="longer than"):
        parse("name = " + "x" * 2100)
    with pytest.raises(QuerySyntaxError, match="nests deeper"):
        parse("(" * 60 + "name = x" + ")" * 60)


NAMES = st.sampled_from(["uuid", "mac", "name", "serialNumber", "model", "defaultRoute", "group"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
VALUES = st.one_of(TEXT, st.integers(-1000, 1000))


def leaves() -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Compare, NAMES, st.sampled_from(["=", "!="]), VALUES),
        st.builds(Compare, NAMES, st.just("~"), TEXT),
        st.builds(Compare, st.just("softwareVersion"), st.sampled_from(["<", ">=", "="]), TEXT),
        st.builds(Compare, st.just("status"), st.just("="), st.sampled_from(["online", "offline"])),
        st.builds(Compare, st.just("attr.site"), st.sampled_from(["<", "="]), VALUES),
        st.builds(InList, NAMES, st.lists(VALUES, min_size=1, max_size=3).map(tuple)),
        st.builds(HasTag, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,10}", fullmatch=True)),
        st.builds(Has, st.sampled_from(["attr.rack", "model"])),
    )


def trees() -> st.SearchStrategy[Node]:
    return st.recursive(
        leaves(),
        lambda kids: st.one_of(
            st.builds(Not, kids),
            st.lists(kids, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
            st.lists(kids, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        ),
        max_leaves=8,
    )


@settings(max_examples=300)
@given(trees())
def test_render_then_parse_gives_the_same_tree(tree: Node) -> None:
    assert parse(render(tree)) == tree


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        parse(text)
    except QuerySyntaxError:
        pass
