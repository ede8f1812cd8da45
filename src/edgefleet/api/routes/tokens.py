"""``/api/v1/tokens``: API tokens, shown once, stored hashed, revocable.

Managed from a login (console or ``/auth/local``), never with another API token.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from edgefleet.api.deps import ContainerDep, LoggedIn, audit_target
from edgefleet.api.inputs import Int32
from edgefleet.api.responses import reply
from edgefleet.api.responses.users import TokenCreated, TokenPublic
from edgefleet.api.schemas import TokenCreate
from edgefleet.domain.auth import Role
from edgefleet.presenters.users import token_public

router = APIRouter(prefix="/api/v1", tags=["tokens"])


@router.get("/tokens", name="tokens.list", response_model=list[TokenPublic])
async def list_tokens(c: ContainerDep, p: LoggedIn, all: bool = False) -> Response:
    """Your tokens; an admin may ask for everyone's with ``?all=true``."""
    tokens = await c.accounts.list_tokens(p, all_users=all and p.role is Role.ADMIN)
    return reply([token_public(t) for t in tokens])


@router.post("/tokens", name="tokens.create", response_model=TokenCreated, status_code=201)
async def create_token(
    request: Request, c: ContainerDep, p: LoggedIn, body: TokenCreate
) -> Response:
    token, secret = await c.accounts.create_token(p, body.description, body.scope, body.expiresAt)
    audit_target(request, "token", token.id)
    return reply({**token_public(token), "token": secret}, 201)


@router.delete("/tokens/{token_id}", name="tokens.revoke", response_model=TokenPublic)
async def revoke_token(request: Request, c: ContainerDep, p: LoggedIn, token_id: Int32) -> Response:
    audit_target(request, "token", token_id)
    return reply(token_public(await c.accounts.revoke_token(p, token_id)))
