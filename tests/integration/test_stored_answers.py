"""Answers built from what the database holds, whatever got stored there before today's input
rules (or by hand): PostgreSQL's ``json`` type keeps a lone surrogate escape and a number too
large for a double, which Python reads back as a lone surrogate and an infinity. An answer
carrying them is still whole, valid JSON, never a 500 nor ``Infinity``/``NaN`` tokens."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from edgefleet.bootstrap import Container
from tests.conftest import Caller

pytestmark = pytest.mark.postgresql_only  # SQLite's JSON is text: no such rows to read back


def strict(body: bytes) -> object:
    """``body`` parsed as RFC 8259 JSON (no NaN/Infinity tokens, no lone surrogates)."""

    def no_constant(token: str) -> object:
        raise AssertionError(f"not JSON: {token}")

    doc = json.loads(body, parse_constant=no_constant)
    body.decode("utf-8")  # strict UTF-8: a lone surrogate cannot be encoded in it
    return doc


async def stored_device(
    client: httpx.AsyncClient, writer: Caller, container: Container, properties: str
) -> str:
    """A registered gateway whose properties are ``properties``, written by hand."""
    r = await client.post(
        "/api/v1/devices", headers=writer.headers, json={"displayName": "gw", "mac": "0090E8000001"}
    )
    assert r.status_code == 200, r.text
    uuid = str(r.json()["uuid"])
    async with container.db.session() as s:
        await s.execute(
            text("UPDATE devices SET properties = CAST(:doc AS json) WHERE uuid = :uuid"),
            {"uuid": uuid, "doc": properties},
        )
    return uuid


async def answers(client: httpx.AsyncClient, writer: Caller, uuid: str) -> list[dict[str, Any]]:
    """The gateway's properties as its own answer and the list's give them."""
    one = await client.get(f"/api/v1/devices/{uuid}", headers=writer.headers)
    assert one.status_code == 200, one.text
    listed = await client.get("/api/v1/devices", headers=writer.headers)
    assert listed.status_code == 200, listed.text
    doc, page = strict(one.content), strict(listed.content)
    assert isinstance(doc, dict) and isinstance(page, dict)
    return [doc["properties"], page["data"][0]["properties"]]


async def test_a_lone_surrogate_in_stored_properties_is_answered_as_a_replacement_character(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    uuid = await stored_device(
        client, writer, container, '{"hostname": "gw\\ud800", "nul": "a\\u0000b"}'
    )
    for props in await answers(client, writer, uuid):
        assert (props["hostname"], props["nul"]) == ("gw\ufffd", "a\x00b")


async def test_a_number_too_large_for_a_double_is_answered_null_and_a_huge_integer_whole(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    huge = "9" * 40
    uuid = await stored_device(
        client, writer, container, f'{{"uptime": 1e400, "load": -1e400, "count": {huge}}}'
    )
    for props in await answers(client, writer, uuid):
        assert (props["uptime"], props["load"], props["count"]) == (None, None, int(huge))


async def test_a_lone_surrogate_in_stored_properties_is_shown_on_the_console_device_page(
    client: httpx.AsyncClient, writer: Caller, container: Container
) -> None:
    uuid = await stored_device(
        client, writer, container, '{"hostname": "gw\\ud800", "nested": {"a": "\\ud800"}}'
    )
    r = await client.post(
        "/api/v1/auth/login", json={"email": writer.email, "password": writer.password}
    )
    assert r.status_code == 200, r.text
    for page in (f"/console/devices/{uuid}", f"/console/fragments/devices/{uuid}"):
        r = await client.get(page)
        assert r.status_code == 200, (page, r.text[:300])
        text = r.content.decode("utf-8")
        assert "gw\ufffd" in text
