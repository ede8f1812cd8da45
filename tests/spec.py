"""The official ThingsPro Server v2.5 spec, read from ``../shared`` at test time (never copied).

Moxa's spec is Swagger 2 split per resource; its ``index.yaml`` lists each file's ``paths``
and ``definitions`` as ``$ref``s that their build tool merged. We merge them the same way,
strip the stray quote some paths end with (``/devices/{uuid}'``), and validate with
JSON Schema draft 4 (what Swagger 2 schemas are), dropping Swagger-only keywords.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO.parent / "shared" / "reference" / "thingspro-api" / "server-v2.5" / "schema"
SWAGGER_ONLY = {"example", "examples", "readOnly", "discriminator", "xml", "externalDocs", "format"}


def spec_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_THINGSPRO_SPEC", DEFAULT))


@cache
def load() -> dict[str, Any]:
    root = spec_dir()
    index = root / "index.yaml"
    if not index.is_file():
        message = (
            f"the ThingsPro spec is not at {root}: the conformance test reads it from "
            "../shared/reference/thingspro-api/server-v2.5/schema (or EDGEFLEET_THINGSPRO_SPEC)"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    top = yaml.safe_load(index.read_text())
    paths: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    for ref in top["paths"]:
        part = yaml.safe_load((root / ref["$ref"].split("#")[0]).read_text())
        for path, ops in part.get("paths", {}).items():
            paths[path.rstrip("'")] = ops
        definitions.update(part.get("definitions", {}))
    _fix_group_tasks(definitions)
    return {"paths": paths, "definitions": definitions}


def _fix_group_tasks(definitions: dict[str, Any]) -> None:
    """Erratum: ``Group.tasks`` items are ``GroupTask``, which the spec defines as an *array*
    of ``DeviceTaskCreate`` (arrays of arrays), while its examples show flat task records.
    Records are validated against ``DeviceTaskCreate``, the item the spec meant."""
    group_task = definitions["GroupTask"]
    assert group_task["type"] == "array", "spec changed: GroupTask is no longer an array"
    tasks = definitions["Group"]["properties"]["tasks"]
    assert tasks["items"] == {"$ref": "#/definitions/GroupTask"}, "spec changed: Group.tasks"
    tasks["items"] = group_task["items"]


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if k not in SWAGGER_ONLY}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def operation(method: str, path: str) -> dict[str, Any]:
    return dict(load()["paths"][path][method])


def response_schema(method: str, path: str, status: int = 200) -> dict[str, Any]:
    responses = operation(method, path)["responses"]
    resp = responses.get(status, responses.get(str(status)))
    return dict(resp.get("schema") or {})


def body_schema(method: str, path: str) -> dict[str, Any] | None:
    for p in operation(method, path).get("parameters", []):
        if p.get("in") == "body":
            return dict(p["schema"])
    return None


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Validate against a spec schema; ``#/definitions/...`` refs resolve in the merged spec."""
    full = {**_clean(schema), "definitions": _clean(load()["definitions"])}
    jsonschema.Draft4Validator(full).validate(instance)
