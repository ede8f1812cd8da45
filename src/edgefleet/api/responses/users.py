"""Users, logins and API tokens."""

from __future__ import annotations

from pydantic import Field

from edgefleet.api.responses import Answer
from edgefleet.domain.auth import Role, Scope


class UserPublic(Answer):
    id: int
    email: str
    role: Role
    disabled: bool
    mustChangePassword: bool
    createdAt: str
    lastLoginAt: str | None
    locale: str


class Via(Answer):
    kind: str = Field(description="session or token")
    scope: Scope | None


class Me(UserPublic):
    permissions: list[str]
    via: Via


class UserCreated(UserPublic):
    oneTimePassword: str | None = Field(
        default=None, description="generated when no password was given; shown once"
    )


class PasswordChanged(Answer):
    otherSessionsEnded: int


class ApiLogin(Answer):
    token: str = Field(description="send as Authorization: Bearer <token>")
    expiresAt: str | None
    mustChangePassword: bool


class ConsoleLogin(Answer):
    csrfToken: str = Field(description="send as X-CSRF-Token with each write")
    user: UserPublic


class TokenPublic(Answer):
    id: int
    prefix: str
    description: str
    scope: Scope
    userId: int
    createdAt: str
    expiresAt: str | None
    revokedAt: str | None
    lastUsedAt: str | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the token itself, shown once")
