"""``/openapi.json`` documents every answer, and the compatible answers as the spec does.

- Every operation declares a 2xx answer with a schema (a 204 declares no body).
- For every operation of the official ThingsPro v2.5 spec, the schema of our answer carries
  each key the spec's schema names, with a compatible type, recursively: our documented
  answer is one an old client reads. Where the spec contradicts itself, ``ERRATA`` says
  how it is read; where our model is looser than the spec (a free-form object where the spec
  names keys), ``LOOSER`` says why.

That the answers are what the models say is checked on every request of the test clients
(``tests/answers.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Response

from edgefleet.api.app import create_app
from edgefleet.api.responses import Answer, reply
from edgefleet.bootstrap import build
from edgefleet.settings import Settings
from tests import spec
from tests.answers import checked_client

PREFIX = "/api/v1"

ERRATA: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("post", "/devices"): (
        "schema says an array of Device; its example and the original answer one",
        {"$ref": "#/definitions/Device"},
    ),
    ("post", "/groups"): (
        "schema says an array of Group; its example answers one Group",
        {"$ref": "#/definitions/Group"},
    ),
    ("post", "/groupTasks"): (
        "schema says GroupTask (an array of DeviceTaskCreate); its example is the Group",
        {"$ref": "#/definitions/Group"},
    ),
}
"""Operations whose 2xx schema is an array where its example (and the original) answer
one object: what the answer is checked against instead."""

LOOSER: dict[str, str] = {
    "data": "a deviceTasks answer's data is the gateway's body as it sent it: an object for "
    "most resources, an array or a value for some",
    "tasks[].payload": "a task's request as given (DeviceTaskCreate.payload.data is an allOf of "
    "an array and an object, which nothing satisfies)",
}
"""Where our model is a free-form object and the spec names keys (by the path in the answer)."""


def _resolve(node: dict[str, Any], doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix(prefix)
        node = doc[name]
    return node


def _spec_node(node: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, spec.load()["definitions"], "#/definitions/")
    if node.get("type") == "object" and "items" in node and "properties" not in node:
        # erratum: `{type: object, items: X}` (GET /groups/{id}, PUT, /deviceJobRelay/{id}…)
        # is the spec's way of saying X
        return _spec_node(node["items"])
    if isinstance(node.get("items"), list) and len(node["items"]) == 1:
        # erratum: a tuple of one item (GroupList.data) where an array of it was meant
        return {**node, "items": node["items"][0]}
    return node


def _ours(node: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives our schema allows (``anyOf`` flattened, ``null`` dropped)."""
    node = _resolve(node, components, "#/components/schemas/")
    if "anyOf" in node:
        out = []
        for n in node["anyOf"]:
            out.extend(_ours(n, components))
        return [n for n in out if n.get("type") != "null"]
    return [node]


def _looser(at: str) -> bool:
    return any(at == k or at.endswith(f".{k}") for k in LOOSER)


TYPES = {
    "number": {"number", "integer"},
    "integer": {"integer"},
    "string": {"string"},
    "boolean": {"boolean"},
    "object": {"object"},
    "array": {"array"},
}


def mismatches(
    ours: dict[str, Any], theirs: dict[str, Any], components: dict[str, Any], at: str = ""
) -> list[str]:
    theirs = _spec_node(theirs)
    out: list[str] = []
    for o in _ours(ours, components):
        kind = theirs.get("type")
        if kind is None:
            continue
        if "type" not in o and "enum" not in o and "anyOf" not in o:  # any JSON value
            if not _looser(at):
                out.append(f"{at}: ours is any value, the spec's {kind}")
            continue
        if o.get("type") not in TYPES[kind] and not (kind == "string" and "enum" in o):
            out.append(f"{at or '(answer)'}: ours {o.get('type') or o}, the spec's {kind}")
            continue
        if "enum" in o and "enum" in theirs and not set(o["enum"]) <= set(theirs["enum"]):
            out.append(f"{at}: ours may answer {sorted(set(o['enum']) - set(theirs['enum']))}")
        if kind == "array" and "items" in theirs:
            out += mismatches(o.get("items", {}), theirs["items"], components, f"{at}[]")
        if kind == "object" and theirs.get("properties"):
            props = o.get("properties")
            if not props:
                if not _looser(at):
                    out.append(f"{at}: ours is a free-form object, the spec names its keys")
                continue
            for name, sub in theirs["properties"].items():
                where = f"{at}.{name}" if at else name
                if name not in props:
                    out.append(f"{where}: missing from ours")
                else:
                    out += mismatches(props[name], sub, components, where)
    return out


def answer_schema(doc: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    op = doc["paths"][path][method]
    for status, resp in sorted(op["responses"].items()):
        if status.startswith("2"):
            content: dict[str, Any] = resp.get("content") or {}
            media: dict[str, Any] = content.get("application/json") or next(
                iter(content.values()), {}
            )
            return dict(media.get("schema") or {})
    return None


def spec_operations() -> list[tuple[str, str, int]]:
    out = []
    for path, ops in spec.load()["paths"].items():
        for method, op in ops.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            status = min(int(s) for s in op["responses"] if str(s).startswith("2"))
            out.append((method, path, status))
    return sorted(out)


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app's ``/openapi.json`` (the document is built from the routes: no database)."""
    data = tmp_path_factory.mktemp("openapi")
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite+aiosqlite:///{data / 'unused.db'}",
        secret_key="test-secret-key-not-for-production",
    )
    return create_app(build(settings)).openapi()


@pytest.mark.parametrize(("method", "path", "status"), spec_operations(), ids=str)
async def test_compatible_answer_is_documented_as_the_spec_says(
    openapi: dict[str, Any], method: str, path: str, status: int
) -> None:
    ours = openapi["paths"][PREFIX + path][method]
    assert str(status) in ours["responses"], f"the spec answers {status}; ours {ours['responses']}"
    theirs = spec.response_schema(method, path, status)
    if not theirs:  # the spec documents no body
        return
    if (method, path) in ERRATA:
        said = _spec_node(theirs)
        assert said["type"] == "array", "the spec no longer says array: drop the erratum"
        theirs = ERRATA[(method, path)][1]
    schema = answer_schema(openapi, method, PREFIX + path)
    assert schema, f"{method.upper()} {path} documents no answer"
    assert mismatches(schema, theirs, openapi["components"]["schemas"]) == []


def test_the_schema_comparison_finds_a_missing_and_a_mistyped_key() -> None:
    theirs = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "string"}}}
    ours = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert mismatches(ours, theirs, {}) == [
        "a: ours string, the spec's number",
        "b: missing from ours",
    ]
    ours_ok = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    assert mismatches(ours_ok, theirs, {}) == []


def test_every_operation_declares_its_answer(openapi: dict[str, Any]) -> None:
    missing = set()
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            if ok == ["204"]:
                continue
            if not ok or not answer_schema(openapi, method, path):
                missing.add((method, path))
    assert missing == set()


class _Thing(Answer):
    name: str


async def test_the_answer_check_refuses_what_the_model_does_not_describe() -> None:
    app = FastAPI()

    @app.get("/thing/{how}", response_model=_Thing)
    async def thing(how: str) -> Response:
        shapes: dict[str, Any] = {
            "right": {"name": "a"},
            "extra": {"name": "a", "undocumented": 1},
            "mistyped": {"name": 1},
            "missing": {},
        }
        return reply(shapes[how])

    async with checked_client(app) as api:
        assert (await api.get("/thing/right")).json() == {"name": "a"}
        for how in ("extra", "mistyped", "missing"):
            with pytest.raises(AssertionError, match="does not describe"):
                await api.get(f"/thing/{how}")
