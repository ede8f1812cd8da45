"""Logins: the API login, the console cookie session with CSRF, the first admin, and
password changes (throttling is in test_login_throttle.py)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from sqlalchemy import delete as sa_delete

from edgefleet.bootstrap import Container
from edgefleet.db.repos.accounts import UserRepo
from edgefleet.db.tables import User
from edgefleet.domain.auth import Role, Scope
from edgefleet.errors import ConflictError
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
    assert r.status_code == 200 and r.json() == {"otherSessionsEnded": 0}
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


async def test_password_change_ends_the_other_sessions_and_says_so(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    user = await callers.user(Role.OPERATOR)  # one API-login session already
    token = await callers.c.accounts.principal_for_bearer(
        user.headers["Authorization"].split(" ", 1)[1]
    )
    assert token is not None
    _, api_token = await callers.c.accounts.create_token(token, "scripts", Scope.READ)
    body = {"email": user.email, "password": PASSWORD}
    other = (await client.post("/api/v1/auth/local", json=body)).json()["token"]
    console = await client.post("/api/v1/auth/login", json=body)  # a cookie session too
    client.cookies.clear()
    mine = (await client.post("/api/v1/auth/local", json=body)).json()["token"]
    me = {"Authorization": f"Bearer {mine}"}
    r = await client.put(
        "/api/v1/users/me/password",
        headers=me,
        json={"currentPassword": PASSWORD, "newPassword": "another long passphrase"},
    )
    assert r.status_code == 200 and r.json() == {"otherSessionsEnded": 3}
    for ended in (user.headers, {"Authorization": f"Bearer {other}"}):
        assert (await client.get("/api/v1/users/me", headers=ended)).status_code == 401
    client.cookies.set("edgefleet_session", console.cookies["edgefleet_session"])
    assert (await client.get("/api/v1/users/me")).status_code == 401
    client.cookies.clear()
    # the session that made the change goes on; API tokens are not sessions and stay
    assert (await client.get("/api/v1/users/me", headers=me)).status_code == 200
    assert (
        await client.get("/api/v1/devices", headers={"mx-api-token": api_token})
    ).status_code == 200
    # the new password logs in, the old one no longer does
    assert (await client.post("/api/v1/auth/local", json=body)).status_code == 401
    body["password"] = "another long passphrase"
    assert (await client.post("/api/v1/auth/local", json=body)).status_code == 200


async def test_password_change_from_the_console_keeps_its_own_cookie_session(
    client: httpx.AsyncClient, callers: Callers
) -> None:
    user = await callers.user(Role.VIEWER)
    r = await client.post("/api/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    csrf = r.json()["csrfToken"]
    r = await client.put(
        "/api/v1/users/me/password",
        headers={"X-CSRF-Token": csrf},
        json={"currentPassword": PASSWORD, "newPassword": "another long passphrase"},
    )
    assert r.status_code == 200 and r.json() == {"otherSessionsEnded": 1}
    assert (await client.get("/api/v1/users/me")).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 401


async def test_two_admins_changed_at_once_never_leave_none(
    container: Container, callers: Callers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Demoting one admin, disabling or deleting the other at the same moment: each request
    counted two enabled admins before either wrote, and both went through, leaving the server
    with none (only the CLI could get back in)."""
    repo_count = UserRepo.count_active_admins
    for second in ("disable", "delete"):
        one, two = await callers.user(Role.ADMIN), await callers.user(Role.ADMIN)
        counted = 0
        both_counted = asyncio.Event()

        async def count(self: UserRepo) -> int:
            nonlocal counted
            n = await repo_count(self)
            counted += 1
            if counted == 2:
                both_counted.set()
            elif counted == 1:
                # let the other request count too before this one writes (as a race does);
                # bounded, since a request that locks the admins first makes the other wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(both_counted.wait(), 2)
            return n

        monkeypatch.setattr(UserRepo, "count_active_admins", count)
        demote = container.accounts.update_user(one.user_id, role=Role.VIEWER)
        other = (
            container.accounts.update_user(two.user_id, disabled=True)
            if second == "disable"
            else container.accounts.delete_user(two.user_id)
        )
        results = await asyncio.gather(demote, other, return_exceptions=True)
        monkeypatch.setattr(UserRepo, "count_active_admins", repo_count)
        refused = [r for r in results if isinstance(r, ConflictError)]
        assert len(refused) == 1, results
        async with container.db.session() as s:
            assert await UserRepo(s).count_active_admins() == 1, second
        # back to none but the fixtures' next pair
        async with container.db.session() as s:
            await s.execute(sa_delete(User).where(User.role == "admin"))
