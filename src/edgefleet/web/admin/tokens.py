"""The console's API tokens (``/console/tokens``): the viewer's own, or an admin's view of
everyone's; tokens are created and revoked through ``/api/v1/tokens`` from the page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.db.tables import ApiToken
from edgefleet.domain.auth import TOKEN_DESCRIPTION_MAX, Permission, Role
from edgefleet.web.views import fragment_viewer, page, render, when

router = APIRouter(prefix="/console", include_in_schema=False)

TOKEN_EXPIRY_DAYS = (30, 90, 365)


@dataclass(frozen=True)
class TokenRow:
    id: int
    prefix: str
    description: str
    scope: str
    owner: str
    created: str
    expires: str
    last_used: str
    revoked: str
    status: str
    """``active``, ``expired`` or ``revoked``."""


def token_row(t: ApiToken, owners: dict[int, str], now: datetime) -> TokenRow:
    expires_at = t.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if t.revoked_at is not None:
        status = "revoked"
    elif expires_at is not None and expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return TokenRow(
        id=t.id,
        prefix=t.prefix,
        description=t.description,
        scope=t.scope,
        owner=owners.get(t.user_id, str(t.user_id)),
        created=when(t.created_at),
        expires=when(t.expires_at),
        last_used=when(t.last_used_at),
        revoked=when(t.revoked_at),
        status=status,
    )


@router.get("/tokens")
async def tokens_page(request: Request, c: ContainerDep, all: bool = False) -> Response:
    return await page(
        request,
        c,
        "tokens/index.html",
        Permission.FLEET_READ,
        all=all,
        description_max=TOKEN_DESCRIPTION_MAX,
        expiry_days=TOKEN_EXPIRY_DAYS,
    )


@router.get("/fragments/tokens")
async def tokens_fragment(request: Request, c: ContainerDep, all: bool = False) -> Response:
    viewer = await fragment_viewer(request, c, Permission.FLEET_READ)
    if viewer is None:
        return Response(status_code=401)
    everyone = all and viewer.principal.role is Role.ADMIN
    tokens = await c.accounts.list_tokens(viewer.principal, all_users=everyone)
    owners = {viewer.principal.user_id: viewer.principal.email}
    if everyone:
        owners.update({u.id: u.email for u in await c.accounts.list_users()})
    now = datetime.now(UTC)
    return render(
        request,
        "tokens/rows.html",
        viewer,
        rows=[token_row(t, owners, now) for t in tokens],
        everyone=everyone,
    )
