"""Users and their API tokens (never a secret: a token shows its prefix)."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import ApiToken, User
from edgefleet.presenters.times import iso_time


def user_public(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "role": u.role,
        "disabled": u.disabled,
        "mustChangePassword": u.must_change_password,
        "createdAt": iso_time(u.created_at),
        "lastLoginAt": iso_time(u.last_login_at),
        "locale": u.locale,
    }


def token_public(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "prefix": t.prefix,
        "description": t.description,
        "scope": t.scope,
        "userId": t.user_id,
        "createdAt": iso_time(t.created_at),
        "expiresAt": iso_time(t.expires_at),
        "revokedAt": iso_time(t.revoked_at),
        "lastUsedAt": iso_time(t.last_used_at),
    }
