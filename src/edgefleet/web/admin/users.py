"""The console's user list (``/console/users``, for admins): roles, state, last login;
users are invited, changed and disabled through ``/api/v1/users`` from the page."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.domain.auth import Permission, Role
from edgefleet.web.views import fragment_viewer, page, render, when

router = APIRouter(prefix="/console", include_in_schema=False)


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    role: str
    disabled: bool
    must_change_password: bool
    created: str
    last_login: str
    is_me: bool


@router.get("/users")
async def users_page(request: Request, c: ContainerDep) -> Response:
    return await page(
        request, c, "users/index.html", Permission.ADMIN_READ, roles=[r.value for r in Role]
    )


@router.get("/fragments/users")
async def users_fragment(request: Request, c: ContainerDep) -> Response:
    viewer = await fragment_viewer(request, c, Permission.ADMIN_READ)
    if viewer is None:
        return Response(status_code=401)
    rows = [
        UserRow(
            id=u.id,
            email=u.email,
            role=u.role,
            disabled=u.disabled,
            must_change_password=u.must_change_password,
            created=when(u.created_at),
            last_login=when(u.last_login_at),
            is_me=u.id == viewer.principal.user_id,
        )
        for u in await c.accounts.list_users()
    ]
    return render(request, "users/rows.html", viewer, rows=rows, roles=[r.value for r in Role])
