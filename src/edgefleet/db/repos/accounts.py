"""Users, login sessions, API tokens and failed-login records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
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

    async def delete_for_user(self, user_id: int) -> None:
        await self.s.execute(delete(Session).where(Session.user_id == user_id))

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
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def record(self, keys: list[str], at: datetime) -> None:
        self.s.add_all(LoginFailure(key=k, at=at) for k in keys)
        await self.s.flush()

    async def recent(self, key: str, since: datetime) -> tuple[int, datetime | None]:
        """How many failures ``key`` had since ``since``, and the latest one."""
        row = (
            await self.s.execute(
                select(func.count(), func.max(LoginFailure.at)).where(
                    LoginFailure.key == key, LoginFailure.at >= since
                )
            )
        ).one()
        latest = row[1]
        return int(row[0]), latest

    async def clear(self, key: str) -> None:
        await self.s.execute(delete(LoginFailure).where(LoginFailure.key == key))

    async def purge(self, before: datetime) -> None:
        await self.s.execute(delete(LoginFailure).where(LoginFailure.at < before))
