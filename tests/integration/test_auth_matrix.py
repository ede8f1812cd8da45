"""Who may do what, over HTTP: every role and token scope against every kind of endpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from edgefleet.bootstrap import Container
from edgefleet.db.tables import ApiToken
from edgefleet.domain.auth import Role, Scope
from tests.conftest import Caller, Callers

_n = 0


def _mac() -> str:
    global _n
    _n += 1
    return f"0090e8{_n:06x}"


async def fleet_read(client: httpx.AsyncClient, h: dict[str, str]) -> int:
    return (await client.get("/api/v1/devices", headers=h)).status_code


async def fleet_write(client: httpx.AsyncClient, h: dict[str, str]) -> int:
    r = await client.post("/api/v1/devices", headers=h, json={"displayName": "gw", "mac": _mac()})
    return r.status_code


async def admin_read(client: httpx.AsyncClient, h: dict[str, str]) -> int:
    return (await client.get("/api/v1/audit", headers=h)).status_code


async def admin_write(client: httpx.AsyncClient, h: dict[str, str]) -> int:
    global _n
    _n += 1
    r = await client.post(
        "/api/v1/users", headers=h, json={"email": f"u{_n}@example.com", "role": "viewer"}
    )
    return r.status_code


async def token_create(client: httpx.AsyncClient, h: dict[str, str]) -> int:
    r = await client.post("/api/v1/tokens", headers=h, json={"scope": "read", "description": "x"})
    return r.status_code


ACTIONS = [fleet_read, fleet_write, admin_read, admin_write, token_create]

# caller → expected status of each action above, written out by hand from the design
# (not computed from the code under test).
MATRIX: list[tuple[Role, Scope | None, list[int]]] = [
    (Role.ADMIN, None, [200, 200, 200, 201, 201]),
    (Role.OPERATOR, None, [200, 200, 403, 403, 201]),
    (Role.VIEWER, None, [200, 403, 403, 403, 201]),
    (Role.ADMIN, Scope.READ, [200, 403, 200, 403, 403]),
    (Role.ADMIN, Scope.READ_WRITE, [200, 200, 200, 201, 403]),
    (Role.ADMIN, Scope.BROKER, [403, 403, 403, 403, 403]),
    (Role.OPERATOR, Scope.READ, [200, 403, 403, 403, 403]),
    (Role.OPERATOR, Scope.READ_WRITE, [200, 200, 403, 403, 403]),
    (Role.VIEWER, Scope.READ, [200, 403, 403, 403, 403]),
]


@pytest.mark.parametrize(
    ("role", "scope", "expected"),
    MATRIX,
    ids=[f"{r.value}-{s.value if s else 'login'}" for r, s, _ in MATRIX],
)
async def test_permissions_follow_role_and_scope(
    client: httpx.AsyncClient,
    callers: Callers,
    role: Role,
    scope: Scope | None,
    expected: list[int],
) -> None:
    caller = await (callers.user(role) if scope is None else callers.token(role, scope))
    got = [await action(client, caller.headers) for action in ACTIONS]
    assert got == expected


async def test_requests_without_credentials_are_refused_when_anonymous(
    client: httpx.AsyncClient,
) -> None:
    for action in ACTIONS:
        assert await action(client, {}) == 401
    r = await client.get("/api/v1/devices")
    assert r.json() == {"message": "authentication required: send an mx-api-token header"}


async def test_token_header_is_accepted_in_any_letter_case(
    client: httpx.AsyncClient, writer: Caller
) -> None:
    secret = writer.headers["mx-api-token"]
    for name in ("MX-API-TOKEN", "Mx-Api-Token", "mx-api-token"):
        assert (await client.get("/api/v1/devices", headers={name: secret})).status_code == 200
    bearer = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/v1/devices", headers=bearer)).status_code == 200


async def test_viewer_cannot_mint_a_write_token(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    viewer = await callers.user(Role.VIEWER)
    r = await client.post(
        "/api/v1/tokens", headers=viewer.headers, json={"scope": "read/write", "description": "x"}
    )
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    r = await client.post(
        "/api/v1/tokens", headers=viewer.headers, json={"scope": "broker", "description": "x"}
    )
    assert r.status_code == 403


async def _new_token(client: httpx.AsyncClient, admin: Caller, **body: object) -> dict[str, object]:
    r = await client.post(
        "/api/v1/tokens", headers=admin.headers, json={"scope": "read/write", **body}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_token_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, admin: Caller, container: Container
) -> None:
    created = await _new_token(client, admin, description="script on line 3")
    secret = str(created["token"])
    assert secret.startswith("ef_") and len(secret) > 40
    listed = (await client.get("/api/v1/tokens", headers=admin.headers)).json()
    assert [t["description"] for t in listed] == ["script on line 3"]
    assert all("token" not in t for t in listed)
    async with container.db.session() as s:
        row = await s.get(ApiToken, created["id"])
        assert row is not None
        assert secret not in (row.token_hash, row.prefix)
    assert (
        await client.get("/api/v1/devices", headers={"mx-api-token": secret})
    ).status_code == 200


async def test_revoked_token_stops_working(client: httpx.AsyncClient, admin: Caller) -> None:
    created = await _new_token(client, admin)
    h = {"mx-api-token": str(created["token"])}
    assert (await client.get("/api/v1/devices", headers=h)).status_code == 200
    r = await client.delete(f"/api/v1/tokens/{created['id']}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["revokedAt"]
    r = await client.get("/api/v1/devices", headers=h)
    assert r.status_code == 401
    assert "revoked" in r.json()["message"]


async def test_expired_token_stops_working(
    client: httpx.AsyncClient, admin: Caller, container: Container
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = await _new_token(client, admin, expiresAt=soon)
    h = {"mx-api-token": str(created["token"])}
    assert (await client.get("/api/v1/devices", headers=h)).status_code == 200
    later = datetime.now(UTC) + timedelta(hours=1, seconds=1)
    container.accounts.clock = lambda: later  # time passes; the token was just used (cached)
    r = await client.get("/api/v1/devices", headers=h)
    assert r.status_code == 401 and "expired" in r.json()["message"]


async def test_token_in_the_past_is_refused(client: httpx.AsyncClient, admin: Caller) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = await client.post(
        "/api/v1/tokens", headers=admin.headers, json={"scope": "read", "expiresAt": past}
    )
    assert r.status_code == 400


async def test_disabled_users_tokens_stop_working(
    client: httpx.AsyncClient, admin: Caller, callers: Callers
) -> None:
    op = await callers.token(Role.OPERATOR, Scope.READ_WRITE)
    assert (await client.get("/api/v1/devices", headers=op.headers)).status_code == 200
    r = await client.patch(
        f"/api/v1/users/{op.user_id}", headers=admin.headers, json={"disabled": True}
    )
    assert r.status_code == 200
    assert (await client.get("/api/v1/devices", headers=op.headers)).status_code == 401


async def test_token_records_last_use(client: httpx.AsyncClient, admin: Caller) -> None:
    created = await _new_token(client, admin)
    assert created["lastUsedAt"] is None
    await client.get("/api/v1/devices", headers={"mx-api-token": str(created["token"])})
    listed = (await client.get("/api/v1/tokens", headers=admin.headers)).json()
    assert listed[0]["lastUsedAt"] is not None


async def test_users_revoke_only_their_own_tokens(
    client: httpx.AsyncClient, admin: Caller, callers: Callers
) -> None:
    created = await _new_token(client, admin)
    op = await callers.user(Role.OPERATOR)
    r = await client.delete(f"/api/v1/tokens/{created['id']}", headers=op.headers)
    assert r.status_code == 404
    h = {"mx-api-token": str(created["token"])}
    assert (await client.get("/api/v1/devices", headers=h)).status_code == 200


async def test_token_description_is_limited_to_150_characters(
    client: httpx.AsyncClient, admin: Caller
) -> None:
    r = await client.post(
        "/api/v1/tokens", headers=admin.headers, json={"scope": "read", "description": "x" * 151}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "description"]
