"""``/api/v1/tokens``: API tokens, shown once, stored hashed, revocable.

Managed from a login (console or ``/auth/local``), never with another API token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from edgefleet.api.deps import ContainerDep, LoggedIn, audit_target
from edgefleet.api.inputs import Int32
from edgefleet.api.schemas import TokenCreate, token_public
from edgefleet.domain.auth import Role

router = APIRouter(prefix="/api/v1", tags=["tokens"])


@router.get("/tokens", name="tokens.list")
async def list_tokens(c: ContainerDep, p: LoggedIn, all: bool = False) -> list[dict[str, Any]]:
    """Your tokens; an admin may ask for everyone's with ``?all=true``."""
    tokens = await c.accounts.list_tokens(p, all_users=all and p.role is Role.ADMIN)
    return [token_public(t) for t in tokens]


@router.post("/tokens", name="tokens.create", status_code=201)
async def create_token(
    request: Request, c: ContainerDep, p: LoggedIn, body: TokenCreate
) -> dict[str, Any]:
    token, secret = await c.accounts.create_token(p, body.description, body.scope, body.expiresAt)
    audit_target(request, "token", token.id)
    return {**token_public(token), "token": secret}


@router.delete("/tokens/{token_id}", name="tokens.revoke")
async def revoke_token(
    request: Request, c: ContainerDep, p: LoggedIn, token_id: Int32
) -> dict[str, Any]:
    audit_target(request, "token", token_id)
    return token_public(await c.accounts.revoke_token(p, token_id))
