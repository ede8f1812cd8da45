"""Users, login sessions, API tokens and failed-login records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from edgefleet.db.tables import ApiToken, LoginFailure, Session, User
from edgefleet.errors import DuplicateError


class UserRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, user: User) -> None:
        self.s.add(user)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError("user", "email", user.email) from exc

    async def get(self, user_id: int) -> User | None:
        return await self.s.get(User, user_id)

    async def by_email(self, email: str) -> User | None:
        return (await self.s.scalars(select(User).where(User.email == email))).first()

    async def count(self) -> int:
        return int(await self.s.scalar(select(func.count()).select_from(User)) or 0)

    async def lock_active_admins(self) -> None:
        """Lock the enabled admins' rows until the transaction ends (PostgreSQL; SQLite has one
        writer at a time anyway): a change that may remove the last one counts them after."""
        await self.s.execute(
            select(User.id).where(User.role == "admin", ~User.disabled).with_for_update()
        )

    async def count_active_admins(self) -> int:
        n = await self.s.scalar(
            select(func.count()).select_from(User).where(User.role == "admin", ~User.disabled)
        )
        return int(n or 0)

    async def all(self) -> list[User]:
        return list(await self.s.scalars(select(User).order_by(User.id)))

    async def delete(self, user_id: int) -> None:
        await self.s.execute(delete(User).where(User.id == user_id))


class SessionRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, row: Session) -> None:
        self.s.add(row)
        await self.s.flush()

    async def live(self, token_hash: str, now: datetime) -> tuple[Session, User] | None:
        row = (
            await self.s.execute(
                select(Session, User)
                .join(User, User.id == Session.user_id)
                .where(Session.token_hash == token_hash, Session.expires_at > now)
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def delete(self, token_hash: str) -> None:
        await self.s.execute(delete(Session).where(Session.token_hash == token_hash))

    async def delete_for_user(self, user_id: int, *, keep: str | None = None) -> int:
        """End the user's sessions, but the one whose hash is ``keep``; how many ended."""
        stmt = delete(Session).where(Session.user_id == user_id)
        if keep is not None:
            stmt = stmt.where(Session.token_hash != keep)
        result = await self.s.execute(stmt)
        return int(getattr(result, "rowcount", 0) or 0)

    async def purge_expired(self, now: datetime) -> None:
        await self.s.execute(delete(Session).where(Session.expires_at <= now))


class TokenRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, row: ApiToken) -> None:
        self.s.add(row)
        await self.s.flush()

    async def by_hash(self, token_hash: str) -> tuple[ApiToken, User] | None:
        row = (
            await self.s.execute(
                select(ApiToken, User)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.token_hash == token_hash)
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def get(self, token_id: int) -> ApiToken | None:
        return await self.s.get(ApiToken, token_id)

    async def list(self, user_id: int | None) -> list[ApiToken]:
        stmt = select(ApiToken).order_by(ApiToken.id)
        if user_id is not None:
            stmt = stmt.where(ApiToken.user_id == user_id)
        return list(await self.s.scalars(stmt))

    async def touch(self, token_id: int, at: datetime) -> None:
        await self.s.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=at)
        )


class LoginFailureRepo:
    """One row per failed (or in-flight) password check of a throttle key.

    ``lock`` serialises the transactions that decide about the same keys, across server
    instances: PostgreSQL takes a transaction-scoped advisory lock per key (a key with no
    row yet has nothing a row lock could hold), SQLite's single writer lock does the rest.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.s = session
        self._dialect = session.get_bind().dialect.name

    async def lock(self, keys: list[str]) -> None:
        """Hold ``keys`` until the transaction ends; callers pass them sorted (no deadlock)."""
        if self._dialect == "postgresql":
            for key in keys:
                await self.s.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, :seed))"),
                    {"key": key, "seed": ADVISORY_SEED},
                )
        else:
            # SQLite: take the write lock now, so that the read below cannot be stale
            await self.s.execute(text("DELETE FROM login_failures WHERE 0"))

    async def recent(self, key: str) -> tuple[int, datetime | None]:
        """How many failures ``key`` has on record, and the latest one."""
        row = (
            await self.s.execute(
                select(func.count(), func.max(LoginFailure.at)).where(LoginFailure.key == key)
            )
        ).one()
        return int(row[0]), row[1]

    async def record(self, keys: list[str], at: datetime) -> list[int]:
        rows = [LoginFailure(key=k, at=at) for k in keys]
        self.s.add_all(rows)
        await self.s.flush()
        return [r.id for r in rows]

    async def touch(self, ids: list[int], at: datetime) -> None:
        if ids:
            await self.s.execute(update(LoginFailure).where(LoginFailure.id.in_(ids)).values(at=at))

    async def delete(self, ids: list[int]) -> None:
        if ids:
            await self.s.execute(delete(LoginFailure).where(LoginFailure.id.in_(ids)))

    async def clear(self, key: str) -> None:
        await self.s.execute(delete(LoginFailure).where(LoginFailure.key == key))

    async def purge(self, quiet_before: datetime) -> None:
        """Drop the keys whose latest failure is older than ``quiet_before``."""
        quiet = (
            select(LoginFailure.key)
            .group_by(LoginFailure.key)
            .having(func.max(LoginFailure.at) < quiet_before)
        )
        await self.s.execute(delete(LoginFailure).where(LoginFailure.key.in_(quiet)))


ADVISORY_SEED = 0x6C6F67696E
"""Seeds the key hash of the login advisory locks, apart from any other lock's."""
