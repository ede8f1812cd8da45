"""Who may do what: roles, token scopes and the permissions they combine into.

A user's role grants permissions; an API token can only narrow its owner's role:
a token's permissions are ``role ∩ scope``. The ``broker`` scope is apart: it grants
only the broker hook endpoints, and only an admin may create it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from edgefleet.errors import ValidationError


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Scope(StrEnum):
    READ = "read"
    READ_WRITE = "read/write"
    BROKER = "broker"


class Permission(StrEnum):
    FLEET_READ = "fleet:read"
    FLEET_WRITE = "fleet:write"
    ADMIN_READ = "admin:read"
    ADMIN_WRITE = "admin:write"
    BROKER = "broker"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.FLEET_READ}),
    Role.OPERATOR: frozenset({Permission.FLEET_READ, Permission.FLEET_WRITE}),
    Role.ADMIN: frozenset(
        {
            Permission.FLEET_READ,
            Permission.FLEET_WRITE,
            Permission.ADMIN_READ,
            Permission.ADMIN_WRITE,
            Permission.BROKER,
        }
    ),
}

SCOPE_PERMISSIONS: dict[Scope, frozenset[Permission]] = {
    Scope.READ: frozenset({Permission.FLEET_READ, Permission.ADMIN_READ}),
    Scope.READ_WRITE: frozenset(
        {
            Permission.FLEET_READ,
            Permission.FLEET_WRITE,
            Permission.ADMIN_READ,
            Permission.ADMIN_WRITE,
        }
    ),
    Scope.BROKER: frozenset({Permission.BROKER}),
}

TOKEN_PREFIX = "ef_"  # noqa: S105 - a label, not a secret
TOKEN_DESCRIPTION_MAX = 150

LOCALES = ("en", "zh_TW")
"""The languages of the console a user may choose (``users.locale``; empty: the browser's)."""
PASSWORD_MIN_LENGTH = 10


def permissions_for(role: Role, scope: Scope | None = None) -> frozenset[Permission]:
    """What a user of ``role`` may do, through a token of ``scope`` if one is used."""
    granted = ROLE_PERMISSIONS[role]
    return granted if scope is None else granted & SCOPE_PERMISSIONS[scope]


def scope_allowed(role: Role, scope: Scope) -> bool:
    """A user may not mint a token that grants more than the user holds."""
    if scope is Scope.BROKER:
        return role is Role.ADMIN
    if scope is Scope.READ_WRITE:
        return Permission.FLEET_WRITE in ROLE_PERMISSIONS[role]
    return True


def new_secret() -> str:
    """A bearer secret (API token or session): 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """How a bearer secret is stored and looked up: SHA-256, hex.

    API tokens carry 256 random bits, so a fast hash is enough; a slow password hash
    here would cost its full price on every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or " " in email or len(email) > 254:
        raise ValidationError(f"{email!r} is not an email address")
    return email


def check_password_strength(password: str) -> None:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationError(f"password must have at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > 1024:
        raise ValidationError("password must have at most 1024 characters")


class PrincipalKind(StrEnum):
    SESSION = "session"
    TOKEN = "token"  # noqa: S105 - an enum name
    SYSTEM = "system"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a logged-in user (session) or an API token acting for its owner."""

    kind: PrincipalKind
    user_id: int
    email: str
    role: Role
    permissions: frozenset[Permission]
    scope: Scope | None = None
    token_id: int | None = None
    must_change_password: bool = False
    expires_at: datetime | None = None
    locale: str = ""
    """The user's chosen console language (``LOCALES``); empty: the browser's."""

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def actor_id(self) -> str:
        return (
            f"token:{self.token_id}" if self.kind is PrincipalKind.TOKEN else f"user:{self.user_id}"
        )
