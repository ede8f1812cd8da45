"""``/api/v1/users``: accounts and roles (admins), and one's own account."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

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
from edgefleet.api.responses import reply
from edgefleet.api.responses.users import Me, PasswordChanged, UserCreated, UserPublic
from edgefleet.api.schemas import PasswordChange, Preferences, UserCreate, UserUpdate
from edgefleet.presenters.users import user_public

router = APIRouter(prefix="/api/v1", tags=["users"])


@router.get("/users/me", name="users.me", response_model=Me)
async def me(c: ContainerDep, p: AnyPrincipal) -> Response:
    out = user_public(await c.accounts.get_user(p.user_id))
    out["permissions"] = sorted(perm.value for perm in p.permissions)
    out["via"] = {"kind": p.kind.value, "scope": p.scope.value if p.scope else None}
    return reply(out)


@router.patch("/users/me", name="users.preferences", response_model=UserPublic)
async def set_preferences(
    request: Request, c: ContainerDep, p: LoggedIn, body: Preferences
) -> Response:
    """One's own preferences: the console's language (``locale``: ``en``, ``zh_TW``, or
    empty for the browser's)."""
    audit_target(request, "user", p.user_id)
    return reply(user_public(await c.accounts.set_locale(p.user_id, body.locale)))


@router.put("/users/me/password", name="users.change_password", response_model=PasswordChanged)
async def change_password(
    request: Request, c: ContainerDep, p: LoggedIn, body: PasswordChange
) -> Response:
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
    return reply({"otherSessionsEnded": ended})


@router.get("/users", name="users.list", response_model=list[UserPublic])
async def list_users(c: ContainerDep, _: AdminReader) -> Response:
    return reply([user_public(u) for u in await c.accounts.list_users()])


@router.post("/users", name="users.create", response_model=UserCreated, status_code=201)
async def create_user(
    request: Request, c: ContainerDep, _: AdminWriter, body: UserCreate
) -> Response:
    user, generated = await c.accounts.create_user(body.email, body.password, body.role)
    audit_target(request, "user", user.id)
    out = user_public(user)
    if generated is not None:
        out["oneTimePassword"] = generated
    return reply(out, 201)


@router.patch("/users/{user_id}", name="users.update", response_model=UserPublic)
async def update_user(
    request: Request, c: ContainerDep, _: AdminWriter, user_id: Int32, body: UserUpdate
) -> Response:
    audit_target(request, "user", user_id)
    user = await c.accounts.update_user(
        user_id, role=body.role, disabled=body.disabled, password=body.password
    )
    return reply(user_public(user))


@router.delete("/users/{user_id}", name="users.delete", status_code=204)
async def delete_user(request: Request, c: ContainerDep, _: AdminWriter, user_id: Int32) -> None:
    audit_target(request, "user", user_id)
    await c.accounts.delete_user(user_id)
