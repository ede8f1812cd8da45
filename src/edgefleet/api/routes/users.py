"""``/api/v1/users``: accounts and roles (admins), and one's own account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from edgefleet.api.deps import (
    AdminReader,
    AdminWriter,
    AnyPrincipal,
    ContainerDep,
    LoggedIn,
    audit_target,
    client_ip,
    session_secret,
)
from edgefleet.api.inputs import Int32
from edgefleet.api.schemas import (
    PasswordChange,
    Preferences,
    UserCreate,
    UserUpdate,
    user_public,
)

router = APIRouter(prefix="/api/v1", tags=["users"])


@router.get("/users/me", name="users.me")
async def me(c: ContainerDep, p: AnyPrincipal) -> dict[str, Any]:
    out = user_public(await c.accounts.get_user(p.user_id))
    out["permissions"] = sorted(perm.value for perm in p.permissions)
    out["via"] = {"kind": p.kind.value, "scope": p.scope.value if p.scope else None}
    return out


@router.patch("/users/me", name="users.preferences")
async def set_preferences(
    request: Request, c: ContainerDep, p: LoggedIn, body: Preferences
) -> dict[str, Any]:
    """One's own preferences: the console's language (``locale``: ``en``, ``zh_TW``, or
    empty for the browser's)."""
    audit_target(request, "user", p.user_id)
    return user_public(await c.accounts.set_locale(p.user_id, body.locale))


@router.put("/users/me/password", name="users.change_password")
async def change_password(
    request: Request, c: ContainerDep, p: LoggedIn, body: PasswordChange
) -> dict[str, Any]:
    """Throttled as logins are. Ends every other session of the user (API tokens stay:
    revoke them at ``/api/v1/tokens``) and says how many."""
    audit_target(request, "user", p.user_id)
    ended = await c.accounts.change_password(
        p.user_id,
        body.currentPassword,
        body.newPassword,
        ip=client_ip(request),
        keep_session=session_secret(request),
    )
    return {"otherSessionsEnded": ended}


@router.get("/users", name="users.list")
async def list_users(c: ContainerDep, _: AdminReader) -> list[dict[str, Any]]:
    return [user_public(u) for u in await c.accounts.list_users()]


@router.post("/users", name="users.create", status_code=201)
async def create_user(
    request: Request, c: ContainerDep, _: AdminWriter, body: UserCreate
) -> dict[str, Any]:
    user, generated = await c.accounts.create_user(body.email, body.password, body.role)
    audit_target(request, "user", user.id)
    out = user_public(user)
    if generated is not None:
        out["oneTimePassword"] = generated
    return out


@router.patch("/users/{user_id}", name="users.update")
async def update_user(
    request: Request, c: ContainerDep, _: AdminWriter, user_id: Int32, body: UserUpdate
) -> dict[str, Any]:
    audit_target(request, "user", user_id)
    user = await c.accounts.update_user(
        user_id, role=body.role, disabled=body.disabled, password=body.password
    )
    return user_public(user)


@router.delete("/users/{user_id}", name="users.delete", status_code=204)
async def delete_user(request: Request, c: ContainerDep, _: AdminWriter, user_id: Int32) -> None:
    audit_target(request, "user", user_id)
    await c.accounts.delete_user(user_id)
