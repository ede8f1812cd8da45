"""Logins: the gateway-style API login and the console's cookie session."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from edgefleet.api.deps import (
    SESSION_COOKIE,
    AnyPrincipal,
    ContainerDep,
    client_ip,
    session_secret,
)
from edgefleet.api.errors import CompatRoute
from edgefleet.api.responses import reply
from edgefleet.api.responses.users import ApiLogin, ConsoleLogin
from edgefleet.api.schemas import LoginBody
from edgefleet.domain.auth import PrincipalKind
from edgefleet.presenters.times import iso_time
from edgefleet.presenters.users import user_public

compat = APIRouter(prefix="/api/v1", tags=["auth"], route_class=CompatRoute)
router = APIRouter(prefix="/api/v1", tags=["auth"])


def _login_actor(request: Request, email: str) -> None:
    request.state.audit_actor = email


@compat.post("/auth/local", name="auth.login_api", response_model=ApiLogin)
async def login_api(request: Request, c: ContainerDep, body: LoginBody) -> Response:
    """``{email, password}`` → ``{token}``; send it as ``Authorization: Bearer <token>``."""
    _login_actor(request, body.email)
    result = await c.accounts.login(body.email, body.password, client_ip(request))
    return reply(
        {
            "token": result.secret,
            "expiresAt": iso_time(result.expires_at),
            "mustChangePassword": result.user.must_change_password,
        }
    )


@router.post("/auth/login", name="auth.login_console", response_model=ConsoleLogin)
async def login_console(
    request: Request, response: Response, c: ContainerDep, body: LoginBody
) -> dict[str, Any]:
    """Console login: sets an HttpOnly session cookie; writes then need ``X-CSRF-Token``."""
    _login_actor(request, body.email)
    result = await c.accounts.login(body.email, body.password, client_ip(request))
    response.set_cookie(
        SESSION_COOKIE,
        result.secret,
        max_age=c.settings.http.session_ttl_seconds,
        httponly=True,
        secure=c.settings.http.cookie_secure,
        samesite="lax",
        path="/",
    )
    return {"csrfToken": result.csrf_token, "user": user_public(result.user)}


@router.post("/auth/logout", name="auth.logout", status_code=204)
async def logout(request: Request, response: Response, c: ContainerDep, p: AnyPrincipal) -> None:
    if p.kind is PrincipalKind.SESSION:
        secret = session_secret(request)
        if secret:
            await c.accounts.logout(secret)
    response.delete_cookie(SESSION_COOKIE, path="/")
