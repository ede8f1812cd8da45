"""Logins: the API login, the console cookie session with CSRF, throttling, first admin."""

from __future__ import annotations

import httpx

from edgefleet.bootstrap import Container
from edgefleet.domain.auth import Role
from tests.conftest import Callers

PASSWORD = "correct horse battery"


async def test_api_login_returns_a_bearer_token(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    user = await callers.user(Role.OPERATOR)
    r = await client.post(
        "/api/v1/auth/local",
        json={"email": user.email.upper(), "password": PASSWORD, "isKeepEmail": False},
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["email"] == user.email and me.json()["role"] == "operator"


async def test_wrong_password_is_refused_with_the_original_error_shape(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    user = await callers.user(Role.VIEWER)
    r = await client.post("/api/v1/auth/local", json={"email": user.email, "password": "nope"})
    assert r.status_code == 401
    assert r.json() == {"message": "wrong email or password"}
    r = await client.post(
        "/api/v1/auth/local", json={"email": "nobody@example.com", "password": "x"}
    )
    assert r.status_code == 401 and r.json() == {"message": "wrong email or password"}


async def test_logins_are_banned_after_max_retry_per_account(
    client: httpx.AsyncClient, callers: Callers, container: Container
) -> None:
    user = await callers.user(Role.VIEWER)
    limit = container.settings.login.max_retry
    for _ in range(limit):
        r = await client.post("/api/v1/auth/local", json={"email": user.email, "password": "bad"})
        assert r.status_code == 401
    r = await client.post("/api/v1/auth/local", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert "too many failed logins" in r.json()["message"]


async def test_logins_are_banned_per_address_across_accounts(
    client: httpx.AsyncClient, callers: Callers, container: Container
) -> None:
    victim = await callers.user(Role.VIEWER)
    for i in range(container.settings.login.max_retry):
        await client.post(
            "/api/v1/auth/local", json={"email": f"guess{i}@example.com", "password": "bad"}
        )
    # the same address may not try another account either
    r = await client.post("/api/v1/auth/local", json={"email": victim.email, "password": PASSWORD})
    assert r.status_code == 429
    # another address still logs in to that account
    transport = httpx.ASGITransport(app=client._transport.app, client=("203.0.113.9", 1))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        r = await other.post(
            "/api/v1/auth/local", json={"email": victim.email, "password": PASSWORD}
        )
        assert r.status_code == 200


async def test_successful_login_resets_the_account_counter(
    client: httpx.AsyncClient, callers: Callers, container: Container
) -> None:
    user = await callers.user(Role.VIEWER)
    limit = container.settings.login.max_retry
    for _ in range(limit - 1):
        await client.post("/api/v1/auth/local", json={"email": user.email, "password": "bad"})
    assert (
        await client.post("/api/v1/auth/local", json={"email": user.email, "password": PASSWORD})
    ).status_code == 200
    transport = httpx.ASGITransport(app=client._transport.app, client=("203.0.113.10", 1))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        r = await other.post("/api/v1/auth/local", json={"email": user.email, "password": "bad"})
        assert r.status_code == 401  # counting starts again: not banned


async def test_console_session_needs_csrf_header_for_writes(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    user = await callers.user(Role.OPERATOR)
    r = await client.post("/api/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    csrf = r.json()["csrfToken"]
    # the cookie is kept by the client: reads work
    assert (await client.get("/api/v1/devices")).status_code == 200
    body = {"displayName": "gw", "mac": "0090e8aabbcc"}
    r = await client.post("/api/v1/devices", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    r = await client.post("/api/v1/devices", json=body, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    r = await client.post("/api/v1/devices", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    # logout ends the session server-side
    r = await client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    client.cookies.clear()
    assert (await client.get("/api/v1/devices")).status_code == 401


async def test_one_time_password_must_be_changed_first(
    client: httpx.AsyncClient, container: Container
) -> None:
    first = await container.accounts.ensure_first_admin("root@example.com")
    assert first is not None
    user, password = first
    assert user.role == "admin" and len(password) >= 12
    assert await container.accounts.ensure_first_admin("other@example.com") is None
    r = await client.post(
        "/api/v1/auth/local", json={"email": "root@example.com", "password": password}
    )
    assert r.status_code == 200 and r.json()["mustChangePassword"] is True
    h = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await client.get("/api/v1/devices", headers=h)
    assert r.status_code == 403 and "one-time password" in r.json()["message"]
    r = await client.put(
        "/api/v1/users/me/password",
        headers=h,
        json={"currentPassword": password, "newPassword": "short"},
    )
    assert r.status_code == 400
    r = await client.put(
        "/api/v1/users/me/password",
        headers=h,
        json={"currentPassword": password, "newPassword": "a much better passphrase"},
    )
    assert r.status_code == 204
    assert (await client.get("/api/v1/devices", headers=h)).status_code == 200


async def test_last_admin_cannot_be_demoted_or_deleted(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    admin = await callers.user(Role.ADMIN)
    r = await client.patch(
        f"/api/v1/users/{admin.user_id}", headers=admin.headers, json={"role": "viewer"}
    )
    assert r.status_code == 409
    r = await client.delete(f"/api/v1/users/{admin.user_id}", headers=admin.headers)
    assert r.status_code == 409
    other = await callers.user(Role.ADMIN)
    r = await client.delete(f"/api/v1/users/{admin.user_id}", headers=other.headers)
    assert r.status_code == 204


async def test_created_user_gets_a_one_time_password_when_none_given(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    admin = await callers.user(Role.ADMIN)
    r = await client.post(
        "/api/v1/users", headers=admin.headers, json={"email": "new@example.com", "role": "viewer"}
    )
    assert r.status_code == 201
    body = r.json()
    assert body["mustChangePassword"] is True and len(body["oneTimePassword"]) >= 12
    r = await client.post(
        "/api/v1/users", headers=admin.headers, json={"email": "NEW@example.com", "role": "viewer"}
    )
    assert r.status_code == 409
    listed = (await client.get("/api/v1/users", headers=admin.headers)).json()
    assert all(
        "oneTimePassword" not in u
        and "password" not in str(u).lower().replace("mustchangepassword", "")
        for u in listed
    )
