"""Every write lands in the audit log with actor, action, target and outcome."""

from __future__ import annotations

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Connection

from edgefleet.bootstrap import Container
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.auth import Role
from edgefleet.services.audit import Actor
from tests.conftest import Caller, Callers
from tests.integration.test_devices_api import register


async def test_writes_are_audited_with_actor_and_outcome(
    client: httpx.AsyncClient, admin: Caller, writer: Caller
) -> None:
    dev = await register(client, writer.headers, "0090e8000001")
    await client.post(
        "/api/v1/devices", headers=writer.headers, json={"mac": "0090e8000001"}
    )  # duplicate
    await client.get("/api/v1/devices", headers=writer.headers)  # reads are not audited
    r = await client.get("/api/v1/audit", headers=admin.headers, params={"action": "devices."})
    assert r.status_code == 200
    entries = r.json()["data"]
    assert [(e["action"], e["outcome"], e["statusCode"]) for e in entries] == [
        ("devices.create", "failure", 409),
        ("devices.create", "success", 200),
    ]
    ok = entries[1]
    assert ok["actor"]["type"] == "token" and ok["actor"]["name"] == writer.email
    assert ok["target"] == {"type": "device", "id": dev["uuid"]}
    assert ok["ip"] == "198.51.100.7"


async def test_failed_logins_and_denied_writes_are_audited(
    client: httpx.AsyncClient, admin: Caller, callers: Callers
) -> None:
    await client.post("/api/v1/auth/local", json={"email": "mallory@example.com", "password": "x"})
    viewer = await callers.user(Role.VIEWER)
    await client.post("/api/v1/groups", headers=viewer.headers, json={"name": "nope"})
    entries = (await client.get("/api/v1/audit", headers=admin.headers)).json()["data"]
    summary = [(e["action"], e["outcome"], e["actor"]["name"]) for e in entries]
    assert ("groups.create", "denied", viewer.email) in summary
    assert ("auth.login_api", "denied", "mallory@example.com") in summary


async def test_audit_is_admin_only_and_paginates(
    client: httpx.AsyncClient, admin: Caller, writer: Caller
) -> None:
    for i in range(5):
        await register(client, writer.headers, f"0090e800000{i}")
    assert (await client.get("/api/v1/audit", headers=writer.headers)).status_code == 403
    page1 = (
        await client.get("/api/v1/audit?limit=3&action=devices.", headers=admin.headers)
    ).json()
    assert len(page1["data"]) == 3 and page1["nextCursor"] is not None
    page2 = (
        await client.get(
            f"/api/v1/audit?limit=3&action=devices.&cursor={page1['nextCursor']}",
            headers=admin.headers,
        )
    ).json()
    ids = [e["id"] for e in page1["data"] + page2["data"]]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)


async def test_an_audit_entry_is_one_statement_without_a_transaction(
    container: Container,
) -> None:
    """Every write request records an entry: one INSERT committing by itself (one round
    trip), not BEGIN, INSERT and COMMIT."""
    statements: list[tuple[str, str | None]] = []
    engine = container.db.engine.sync_engine

    def executed(conn: Connection, _cursor: object, sql: str, *_: object) -> None:
        isolation = conn.get_execution_options().get("isolation_level")
        statements.append((sql.split()[0].upper(), isolation))

    event.listen(engine, "before_cursor_execute", executed)
    try:
        await container.audit.record(Actor("cli", "", "ops"), "devices.delete", outcome="success")
    finally:
        event.remove(engine, "before_cursor_execute", executed)
    assert statements == [("INSERT", "AUTOCOMMIT")]
    kept = await container.audit.query(AuditFilter(action="devices.delete"), 10)
    assert [(e.actor_name, e.outcome) for e in kept] == [("ops", "success")]
