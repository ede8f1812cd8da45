"""The fleet query language: parse text into a typed AST (no SQL here; see db/fleetquery.py).

    model = "UC-8112" and softwareVersion < "2.4" and tag:line-3
    status = online and (group = "plant-a" or attr.site ~ "berlin") and not tag:retired
    mac in ["0090e8112233", "00:90:E8:11:22:34"]

Precedence: ``not`` > ``and`` > ``or``; parentheses group. Operators ``= != < <= > >=``,
``~`` (case-insensitive contains), ``in [..]``; ``tag:NAME``; ``has FIELD``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from edgefleet.domain.devices import ConnectionStatus
from edgefleet.errors import QuerySyntaxError

MAX_LENGTH = 2000
MAX_DEPTH = 50

Value = str | int | float | bool | None

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> negate
         | atom
?atom: "(" or_expr ")"
     | field OP value          -> compare
     | field _IN "[" [value ("," value)*] "]" -> in_list
     | TAGREF                  -> has_tag
     | _HAS field              -> has
field: NAME
?value: ESCAPED_STRING -> string
      | SIGNED_NUMBER  -> number
      | NAME           -> word
OP: "!=" | "<=" | ">=" | "=" | "<" | ">" | "~"
_OR.2: /or\b/i
_AND.2: /and\b/i
_NOT.2: /not\b/i
_IN.2: /in\b/i
_HAS.2: /has\b/i
TAGREF.2: /tag:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}/i
NAME: /[A-Za-z_][A-Za-z0-9_.\-]*/
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

FIELDS: dict[str, str] = {
    "uuid": "uuid",
    "mac": "mac",
    "name": "name",
    "displayname": "name",
    "display_name": "name",
    "serialnumber": "serialNumber",
    "serial": "serialNumber",
    "serial_number": "serialNumber",
    "description": "description",
    "status": "status",
    "connection": "status",
    "connection.status": "status",
    "model": "model",
    "modelname": "model",
    "model_name": "model",
    "softwareversion": "softwareVersion",
    "firmware": "softwareVersion",
    "version": "softwareVersion",
    "software_version": "softwareVersion",
    "defaultroute": "defaultRoute",
    "aliasname": "aliasName",
    "group": "group",
    "groupid": "groupId",
    "createdat": "createdAt",
}
ORDERED = {"softwareVersion", "createdAt", "groupId"}
"""Fields that take ``< <= > >=`` besides ``attr.*``."""
KNOWN = [*sorted(set(FIELDS.values())), "attr.<key>"]


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Value


@dataclass(frozen=True)
class InList:
    field: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class HasTag:
    tag: str


@dataclass(frozen=True)
class Has:
    field: str


Node = And | Or | Not | Compare | InList | HasTag | Has


class _Invalid(Exception):
    def __init__(self, message: str, column: int | None) -> None:
        super().__init__(message)
        self.message, self.column = message, column


def canonical_field(name: str, column: int | None = None) -> str:
    if name.lower().startswith("attr."):
        key = name[5:]
        if not key:
            raise _Invalid("attr. needs a key, e.g. attr.site", column)
        return "attr." + key
    try:
        return FIELDS[name.lower()]
    except KeyError:
        raise _Invalid(
            f"unknown field {name!r}; known fields: {', '.join(KNOWN)}", column
        ) from None


def _check(field: str, op: str, value: Value, column: int | None) -> Value:
    if op in ("<", "<=", ">", ">=") and field not in ORDERED and not field.startswith("attr."):
        raise _Invalid(f"{field} cannot be compared with {op}; use = != ~ or in", column)
    if field == "status":
        if op not in ("=", "!="):
            raise _Invalid("status takes = or != (or in)", column)
        if value not in {s.value for s in ConnectionStatus}:
            raise _Invalid(f"status is one of created, online, offline, not {value!r}", column)
    if field == "groupId" and (not isinstance(value, int) or isinstance(value, bool)):
        raise _Invalid("groupId needs a whole number", column)
    if field == "createdAt":
        if op == "~" or not isinstance(value, str):
            raise _Invalid(
                'createdAt needs an ISO-8601 time, e.g. createdAt > "2026-01-01"', column
            )
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _Invalid(f"createdAt: {value!r} is not an ISO-8601 time", column) from None
    if op == "~" and not isinstance(value, str):
        raise _Invalid("~ (contains) needs text", column)
    return value


def created_at_value(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


_WORDS: dict[str, Value] = {"true": True, "false": False, "null": None}


@v_args(inline=True)
class _Build(Transformer[Token, Node]):
    def string(self, tok: Token) -> str:
        return str(json.loads(tok))

    def number(self, tok: Token) -> int | float:
        text = str(tok)
        return float(text) if any(c in text for c in ".eE") else int(text)

    def word(self, tok: Token) -> Value:
        low = str(tok).lower()
        return _WORDS[low] if low in _WORDS else str(tok)

    def field(self, tok: Token) -> tuple[str, int | None]:
        return canonical_field(str(tok), tok.column), tok.column

    def compare(self, field: tuple[str, int | None], op: Token, value: Value) -> Compare:
        name, column = field
        return Compare(name, str(op), _check(name, str(op), value, column))

    def in_list(self, field: tuple[str, int | None], *values: Value) -> InList:
        name, column = field
        items = tuple(values)
        if not items:
            raise _Invalid(f"{name} in [] needs at least one value", column)
        for v in items:
            _check(name, "=", v, column)
        return InList(name, items)

    def has_tag(self, tok: Token) -> HasTag:
        return HasTag(str(tok)[4:])

    def has(self, field: tuple[str, int | None]) -> Has:
        return Has(field[0])

    def negate(self, item: Node) -> Not:
        return Not(item)

    def and_expr(self, *items: Node) -> And:
        return And(tuple(items))

    def or_expr(self, *items: Node) -> Or:
        return Or(tuple(items))


_PARSER = Lark(GRAMMAR, parser="lalr", maybe_placeholders=False)


def _depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def parse(text: str) -> Node:
    """Parse a fleet query; every failure is a ``QuerySyntaxError`` naming the column."""
    if not text or not text.strip():
        raise QuerySyntaxError("the query is empty", text)
    if len(text) > MAX_LENGTH:
        raise QuerySyntaxError(f"the query is longer than {MAX_LENGTH} characters", text)
    if _depth(text) > MAX_DEPTH or text.lower().count("not") > MAX_DEPTH:
        raise QuerySyntaxError(f"the query nests deeper than {MAX_DEPTH} levels", text)
    try:
        tree = _PARSER.parse(text)
        node: Node = _Build().transform(tree)
    except VisitError as exc:
        inner = exc.orig_exc
        if isinstance(inner, _Invalid):
            raise QuerySyntaxError(inner.message, text, inner.column) from exc
        raise
    except UnexpectedEOF as exc:
        raise QuerySyntaxError("the query ends too early", text, len(text) + 1) from exc
    except UnexpectedCharacters as exc:
        pos = exc.pos_in_stream or 0
        raise QuerySyntaxError(f"unexpected {text[pos]!r}", text, exc.column) from exc
    except UnexpectedInput as exc:
        token = getattr(exc, "token", None)
        if token is None or token.type == "$END" or not str(token):
            raise QuerySyntaxError("unexpected end", text, len(text.rstrip()) + 1) from exc
        column = exc.column if isinstance(exc.column, int) and exc.column > 0 else None
        raise QuerySyntaxError(f"unexpected {str(token)!r}", text, column) from exc
    except RecursionError as exc:
        raise QuerySyntaxError("the query is too deeply nested", text) from exc
    return node


def _render_value(v: Value) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(v)


def render(node: Node) -> str:
    """The query text for an AST; ``parse(render(n)) == n``."""
    if isinstance(node, Or):
        return " or ".join(_group(i, Or) for i in node.items)
    if isinstance(node, And):
        return " and ".join(_group(i, And) for i in node.items)
    if isinstance(node, Not):
        return "not " + _group(node.item, Not)
    if isinstance(node, Compare):
        return f"{node.field} {node.op} {_render_value(node.value)}"
    if isinstance(node, InList):
        return f"{node.field} in [{', '.join(_render_value(v) for v in node.values)}]"
    if isinstance(node, HasTag):
        return f"tag:{node.tag}"
    return f"has {node.field}"


def _group(node: Node, parent: type[Any]) -> str:
    text = render(node)
    needs = isinstance(node, Or | And) if parent is not Or else isinstance(node, Or)
    if parent is And and isinstance(node, And):
        needs = True
    return f"({text})" if needs else text
