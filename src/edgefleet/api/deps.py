"""Typed dependencies: one line per concern in each handler.

Credentials, in order: the ``mx-api-token`` header (ThingsPro clients; any letter case),
``Authorization: Bearer`` (an API token or an API-login session), then the console's
session cookie. A cookie-authenticated request that changes anything must carry the
session's CSRF token in ``X-CSRF-Token``: a cross-site form can send the cookie, never the header.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from edgefleet.bootstrap import Container
from edgefleet.domain.auth import Permission, Principal, PrincipalKind, Scope
from edgefleet.errors import AuthenticationError, AuthError, PermissionDeniedError, StorageError

SESSION_COOKIE = "edgefleet_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BROKER_PREFIX = "/api/v1/broker/"
"""The only routes a broker-scope credential is accepted on (API token or the provisioned
``broker_token``): elsewhere it is refused before any handler, even one that needs no
permission (``/users/me``)."""
PASSWORD_CHANGE_PATHS = frozenset(
    {"/api/v1/users/me", "/api/v1/users/me/password", "/api/v1/auth/logout"}
)


async def get_container(request: Request) -> Container:
    # async, though it awaits nothing: FastAPI runs a plain def dependency in a worker
    # thread, a hand-off that cost every request ≈ 100-300 µs (a third of a hook check)
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


def client_ip(request: Request) -> str:
    """The client's address: the peer's, or the one a trusted proxy forwarded (the app's
    ProxyHeadersMiddleware, configured by ``http.trusted_proxies``, has already decided)."""
    return request.client.host if request.client else ""


def session_secret(request: Request) -> str | None:
    """The session secret a request authenticated with, as ``_resolve`` picks it: a bearer
    header before the cookie."""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return request.cookies.get(SESSION_COOKIE) or None


async def _resolve(request: Request, container: Container) -> Principal:
    accounts = container.accounts
    api_token = request.headers.get("mx-api-token")
    if api_token:
        principal = await accounts.principal_for_token(api_token.strip())
        if principal is None:
            raise AuthenticationError("invalid, expired or revoked API token")
        return principal
    authorization = request.headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if authorization:
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthenticationError("Authorization header must be 'Bearer <token>'")
        principal = await accounts.principal_for_bearer(credential.strip())
        if principal is None:
            raise AuthenticationError("invalid, expired or revoked bearer token")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = await accounts.principal_for_session(cookie)
        if found is None:
            raise AuthenticationError("session expired; log in again")
        principal, csrf = found
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), csrf.encode()):
                raise PermissionDeniedError("missing or wrong X-CSRF-Token for a cookie session")
        return principal
    raise AuthenticationError("authentication required: send an mx-api-token header")


async def current_principal(request: Request, container: ContainerDep) -> Principal:
    principal = await _resolve(request, container)
    request.state.principal = principal
    if principal.scope is Scope.BROKER and not request.url.path.startswith(BROKER_PREFIX):
        raise PermissionDeniedError(f"a broker token is accepted only under {BROKER_PREFIX}")
    if principal.must_change_password and request.url.path not in PASSWORD_CHANGE_PATHS:
        raise PermissionDeniedError(
            "this account uses a one-time password: change it first (PUT /api/v1/users/me/password)"
        )
    return principal


AnyPrincipal = Annotated[Principal, Depends(current_principal)]


async def credential_holds(request: Request, container: Container, permission: Permission) -> bool:
    """Whether the credential ``request`` came with still grants ``permission``: for an
    answer that outlives its authentication (the event stream), asked again now and then.
    False once the session ended (logout, password change), the token was revoked or
    expired, the user was disabled or lost the permission; a database that does not answer
    is no reason to end it (asked again later)."""
    try:
        principal = await _resolve(request, container)
    except AuthError:
        return False
    except StorageError:
        return True
    return not principal.must_change_password and principal.can(permission)


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    async def check(principal: AnyPrincipal) -> Principal:
        if not principal.can(permission):
            if principal.kind is PrincipalKind.TOKEN and principal.scope is not None:
                scope = principal.scope.value
                raise PermissionDeniedError(
                    f"this token's scope ({scope}) does not allow {permission.value}"
                )
            raise PermissionDeniedError(
                f"role {principal.role.value} does not allow {permission.value}"
            )
        return principal

    return check


async def require_login(principal: AnyPrincipal) -> Principal:
    """For managing credentials: a logged-in user, not an API token acting for one."""
    if principal.kind is PrincipalKind.TOKEN:
        raise PermissionDeniedError("managing tokens and passwords needs a login, not an API token")
    return principal


FleetReader = Annotated[Principal, Depends(require(Permission.FLEET_READ))]
FleetWriter = Annotated[Principal, Depends(require(Permission.FLEET_WRITE))]
AdminReader = Annotated[Principal, Depends(require(Permission.ADMIN_READ))]
AdminWriter = Annotated[Principal, Depends(require(Permission.ADMIN_WRITE))]
LoggedIn = Annotated[Principal, Depends(require_login)]


def audit_target(request: Request, target_type: str, target_id: str | int) -> None:
    """Name what a write changed, for the audit log (see api/middleware.py)."""
    request.state.audit_target = (target_type, str(target_id))


def audit_action(request: Request, action: str) -> None:
    """Name the action for the audit log when the route's own name would mislead (a
    rollout's dry run is a ``rollouts.preview``, not a ``rollouts.create``)."""
    request.state.audit_action = action
