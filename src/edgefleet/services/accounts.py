"""Users, logins, sessions and API tokens.

Passwords are argon2id (pwdlib), hashed and checked on a bounded pool of their own
(services/passwords.py); bearer secrets (sessions, API tokens) are 256-bit random strings
stored as SHA-256.

Password guessing (logins and ``change_password``) is throttled per (account, address) and
per address, by the rules of domain/throttle.py, with the failures kept in the database so
that every server instance sees them. An attempt is counted as a failure *before* its
password is checked, in one transaction that holds the keys' locks while it decides: however
many arrive at once, no more are checked than the rules allow. A success takes its count
back.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.accounts import LoginFailureRepo, SessionRepo, TokenRepo, UserRepo
from edgefleet.db.tables import ApiToken, Session, User
from edgefleet.domain.auth import (
    LOCALES,
    SCOPE_PERMISSIONS,
    TOKEN_DESCRIPTION_MAX,
    Principal,
    PrincipalKind,
    Role,
    Scope,
    check_password_strength,
    new_secret,
    normalize_email,
    permissions_for,
    scope_allowed,
    secret_hash,
)
from edgefleet.domain.throttle import ThrottlePolicy, address_key
from edgefleet.errors import (
    AuthenticationError,
    ConflictError,
    LoginBannedError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from edgefleet.services.passwords import PasswordHasher
from edgefleet.services.throttle import ThrottleGate
from edgefleet.settings import LoginSettings

log = logging.getLogger(__name__)

LOGINS = Counter(
    "edgefleet_logins_total",
    "Password logins and password changes, by outcome",
    ["outcome"],  # success, failure, throttled
)

PURGE_INTERVAL = timedelta(minutes=1)
"""Forgotten throttle keys are deleted at most this often per instance."""

TOKEN_TOUCH_INTERVAL = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per token, not on every request."""

AUTH_CACHE_SECONDS = 2.0
"""How long a resolved API token is trusted without asking the database again.

Every credential change made through this process clears the cache at once; a change made
through another instance takes effect here within this many seconds.
"""
AUTH_CACHE_MAX = 10_000


PROVISIONED_BROKER = Principal(
    kind=PrincipalKind.TOKEN,
    user_id=0,
    email="",
    role=Role.ADMIN,
    permissions=SCOPE_PERMISSIONS[Scope.BROKER],
    scope=Scope.BROKER,
    token_id=0,
)
"""Who calls with the provisioned broker token: the broker scope's permissions, no user."""


@dataclass(frozen=True)
class LoginResult:
    secret: str
    csrf_token: str
    expires_at: datetime
    user: User


@dataclass(frozen=True)
class _Attempt:
    """The failure rows an attempt recorded ahead of its check (``pair`` is the
    account-and-address key, which a success clears)."""

    pair: str
    ids: list[int]


class AccountService:
    def __init__(
        self,
        db: Database,
        login: LoginSettings,
        session_ttl: timedelta,
        clock: Clock = utcnow,
        passwords: PasswordHasher | None = None,
        broker_token: str = "",
    ) -> None:
        self.db = db
        # only its hash is kept, compared in constant time (see principal_for_token)
        self._broker_token_key = secret_hash(broker_token) if broker_token else ""
        self.login_settings = login
        self.session_ttl = session_ttl
        self.clock = clock
        self.passwords = passwords or PasswordHasher(login.hash_workers)
        self._pair_policy = ThrottlePolicy(login.max_retry, login.find_time, login.ban_time)
        self._address_policy = ThrottlePolicy(
            login.address_max_retry, login.find_time, login.ban_time
        )
        self._dummy_hash = self.passwords.hash_now(secrets.token_urlsafe(16))
        self._token_cache: dict[str, tuple[float, Principal]] = {}
        self._gate = ThrottleGate()
        self._purged_at: datetime | None = None

    def forget_credentials(self) -> None:
        """Drop every cached token resolution (after any change to users or tokens)."""
        self._token_cache.clear()

    # --- passwords -------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        return await self.passwords.hash(password)

    # --- users -----------------------------------------------------------------------

    async def ensure_first_admin(self, email: str) -> tuple[User, str] | None:
        """On an empty user table, create an admin with a one-time password and return both."""
        async with self.db.session() as s:
            if await UserRepo(s).count() > 0:
                return None
        user, password = await self.create_user(email, None, Role.ADMIN)
        assert password is not None
        return user, password

    async def create_user(
        self, email: str, password: str | None, role: Role
    ) -> tuple[User, str | None]:
        """Create a user; with no password given, one is generated, returned once, and must be
        changed at first login."""
        email = normalize_email(email)
        generated = None
        if password is None:
            generated = password = secrets.token_urlsafe(12)
        else:
            check_password_strength(password)
        now = self.clock()
        user = User(
            email=email,
            password_hash=await self._hash(password),
            role=role.value,
            disabled=False,
            must_change_password=generated is not None,
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as s:
            await UserRepo(s).add(user)
        log.info("user created: %s (%s)", email, role.value)
        return user, generated

    async def list_users(self) -> list[User]:
        async with self.db.session() as s:
            return await UserRepo(s).all()

    async def get_user(self, user_id: int) -> User:
        async with self.db.session() as s:
            user = await UserRepo(s).get(user_id)
        if user is None:
            raise NotFoundError(f"user {user_id} not found")
        return user

    async def update_user(
        self,
        user_id: int,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> User:
        """Admin changes to a user. Never leaves the server without an enabled admin."""
        if password is not None:
            check_password_strength(password)
        new_hash = await self._hash(password) if password is not None else None
        async with self.db.session() as s:
            repo = UserRepo(s)
            user = await repo.get(user_id)
            if user is None:
                raise NotFoundError(f"user {user_id} not found")
            losing_admin = (
                user.role == Role.ADMIN
                and not user.disabled
                and ((role is not None and role is not Role.ADMIN) or disabled is True)
            )
            if losing_admin:
                await _check_not_last_admin(repo)
            if role is not None:
                user.role = role.value
            if disabled is not None:
                user.disabled = disabled
            if new_hash is not None:
                user.password_hash = new_hash
                user.must_change_password = True
            user.updated_at = self.clock()
            if disabled or new_hash is not None:
                await SessionRepo(s).delete_for_user(user.id)
            if losing_admin:
                await _check_admin_left(repo)
        self.forget_credentials()
        return user

    async def set_locale(self, user_id: int, locale: str) -> User:
        """One's console language (``LOCALES``), or empty for the browser's."""
        if locale and locale not in LOCALES:
            raise ValidationError(f"locale must be one of {', '.join(LOCALES)}, or empty")
        async with self.db.session() as s:
            user = await UserRepo(s).get(user_id)
            if user is None:
                raise NotFoundError(f"user {user_id} not found")
            user.locale = locale
            user.updated_at = self.clock()
        return user

    async def delete_user(self, user_id: int) -> None:
        async with self.db.session() as s:
            repo = UserRepo(s)
            user = await repo.get(user_id)
            if user is None:
                raise NotFoundError(f"user {user_id} not found")
            losing_admin = user.role == Role.ADMIN and not user.disabled
            if losing_admin:
                await _check_not_last_admin(repo)
            await repo.delete(user_id)
            if losing_admin:
                await _check_admin_left(repo)
        self.forget_credentials()

    async def set_password(self, email: str, password: str) -> User:
        """Set a password from the CLI (no old password needed); it need not be changed again."""
        check_password_strength(password)
        new_hash = await self._hash(password)
        async with self.db.session() as s:
            user = await UserRepo(s).by_email(normalize_email(email))
            if user is None:
                raise NotFoundError(f"no user with email {email!r}")
            user.password_hash = new_hash
            user.must_change_password = False
            user.updated_at = self.clock()
            await SessionRepo(s).delete_for_user(user.id)
        return user

    async def change_password(
        self, user_id: int, old: str, new: str, *, ip: str = "", keep_session: str | None = None
    ) -> int:
        """Change one's own password, throttled as a login is (the caller may hold a stolen
        session); ends the user's other sessions (all but ``keep_session``, a session
        secret) and returns how many."""
        check_password_strength(new)
        user = await self.get_user(user_id)
        attempt = await self._begin_attempt(user.email, ip)
        if not await self._check(attempt, old, user.password_hash):
            log.info("password change: wrong current password for %s from %s", user.email, ip)
            raise AuthenticationError("the current password is wrong")
        await self._succeeded(attempt)
        if old == new:
            raise ValidationError("the new password must differ from the current one")
        new_hash = await self._hash(new)
        async with self.db.session() as s:
            row = await UserRepo(s).get(user_id)
            if row is None:
                raise NotFoundError(f"user {user_id} not found")
            row.password_hash = new_hash
            row.must_change_password = False
            row.updated_at = self.clock()
            ended = await SessionRepo(s).delete_for_user(
                user_id, keep=secret_hash(keep_session) if keep_session else None
            )
        log.info("password changed for %s; %d other session(s) ended", user.email, ended)
        return ended

    # --- login and its throttle -------------------------------------------------------

    def _keys(self, email: str, ip: str) -> list[tuple[str, ThrottlePolicy]]:
        address = address_key(ip) if ip else ""
        keys = [(f"pair:{address}|{email}", self._pair_policy)]
        if address:
            keys.append((f"address:{address}", self._address_policy))
        return keys

    async def _begin_attempt(self, email: str, ip: str) -> _Attempt:
        """Decide whether a password may be checked now and, if so, record the attempt as
        a failure first: ``LoginBannedError`` with the wait otherwise."""
        self.passwords.ensure_room()
        keys = self._keys(email, ip)
        names = [k for k, _ in keys]
        self._refuse_if_known_waiting(names)
        # one attempt per key at a time asks the database (a burst holds one connection)
        async with self._gate.hold(names):
            self._refuse_if_known_waiting(names)
            now = self.clock()
            async with self.db.session() as s:
                repo = LoginFailureRepo(s)
                await repo.lock(sorted(names))
                wait = 0.0
                for key, policy in keys:
                    failures, latest = await repo.recent(key)
                    if failures and policy.forgotten(failures, latest, now):
                        await repo.clear(key)
                        continue
                    key_wait = policy.wait(failures, latest, now)
                    if key_wait > 0:
                        self._gate.remember(key, now + timedelta(seconds=key_wait))
                    wait = max(wait, key_wait)
                if wait > 0:
                    LOGINS.labels("throttled").inc()
                    raise LoginBannedError(math.ceil(wait))
                ids = await repo.record(names, now)
        return _Attempt(keys[0][0], ids)

    def _refuse_if_known_waiting(self, keys: list[str]) -> None:
        """``LoginBannedError`` without asking the database, when this process already
        learnt that one of ``keys`` waits."""
        wait = self._gate.wait(keys, self.clock())
        if wait > 0:
            LOGINS.labels("throttled").inc()
            raise LoginBannedError(math.ceil(wait))

    async def _check(self, attempt: _Attempt, password: str, hashed: str) -> bool:
        """Check the password; when it could not be checked at all (pool full, error) the
        attempt is taken back, since no guess was evaluated."""
        try:
            ok = await self.passwords.verify(password, hashed)
        except BaseException:
            await self._take_back(attempt)
            raise
        if not ok:
            await self._failed(attempt)
        return ok

    async def _failed(self, attempt: _Attempt) -> None:
        """A wrong password: its failure rows stay, dated now (the delay runs from the end
        of the check, not from its start); keys forgotten by everyone are swept now and
        then."""
        LOGINS.labels("failure").inc()
        now = self.clock()
        sweep = self._purged_at is None or now - self._purged_at >= PURGE_INTERVAL
        async with self.db.session() as s:
            repo = LoginFailureRepo(s)
            await repo.touch(attempt.ids, now)
            if sweep:
                self._purged_at = now
                cfg = self.login_settings
                await repo.purge(now - timedelta(seconds=cfg.find_time + cfg.ban_time))

    async def _succeeded(self, attempt: _Attempt) -> None:
        """A right password: the account's count from this address starts again, and the
        address's count loses this attempt (other accounts' failures from it stay)."""
        LOGINS.labels("success").inc()
        async with self.db.session() as s:
            repo = LoginFailureRepo(s)
            await repo.clear(attempt.pair)
            await repo.delete(attempt.ids)

    async def _take_back(self, attempt: _Attempt) -> None:
        try:
            async with self.db.session() as s:
                await LoginFailureRepo(s).delete(attempt.ids)
        except Exception:  # the original error matters more; the rows expire anyway
            log.warning("could not take back a login attempt", exc_info=True)

    async def login(self, email: str, password: str, ip: str = "") -> LoginResult:
        """Check a password and open a session; throttled per (account, address) and per
        address (see the module docstring)."""
        try:
            email = normalize_email(email)
        except ValidationError as exc:
            raise AuthenticationError("wrong email or password") from exc
        attempt = await self._begin_attempt(email, ip)
        async with self.db.session() as s:
            user = await UserRepo(s).by_email(email)
        ok = await self._check(attempt, password, user.password_hash if user else self._dummy_hash)
        if user is None or not ok or user.disabled:
            if ok:  # a disabled account's right password still counts as a failure
                LOGINS.labels("failure").inc()
            log.info("login failed for %s from %s", email, ip or "-")
            raise AuthenticationError("wrong email or password")
        await self._succeeded(attempt)
        now = self.clock()
        secret, csrf = new_secret(), secrets.token_urlsafe(24)
        expires = now + self.session_ttl
        async with self.db.session() as s:
            await SessionRepo(s).add(
                Session(
                    token_hash=secret_hash(secret),
                    user_id=user.id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=expires,
                    ip=ip[:64],
                )
            )
            row = await UserRepo(s).get(user.id)
            assert row is not None
            row.last_login_at = now
            await SessionRepo(s).purge_expired(now)
        return LoginResult(secret=secret, csrf_token=csrf, expires_at=expires, user=user)

    async def logout(self, secret: str) -> None:
        async with self.db.session() as s:
            await SessionRepo(s).delete(secret_hash(secret))

    # --- resolving credentials -------------------------------------------------------

    async def principal_for_session(self, secret: str) -> tuple[Principal, str] | None:
        """The principal behind a session secret and its CSRF token, or None."""
        async with self.db.session() as s:
            found = await SessionRepo(s).live(secret_hash(secret), self.clock())
        if found is None:
            return None
        session, user = found
        if user.disabled:
            return None
        role = Role(user.role)
        principal = Principal(
            kind=PrincipalKind.SESSION,
            user_id=user.id,
            email=user.email,
            role=role,
            permissions=permissions_for(role),
            must_change_password=user.must_change_password,
            locale=user.locale,
        )
        return principal, session.csrf_token

    async def principal_for_token(self, secret: str) -> Principal | None:
        """The principal behind an API token, or None when unknown, revoked or expired.

        The provisioned broker token (``broker_token`` setting) is one too: a broker-scope
        principal of no user (``token:0`` in the audit log)."""
        key = secret_hash(secret)
        if self._broker_token_key and hmac.compare_digest(key, self._broker_token_key):
            return PROVISIONED_BROKER
        cached = self._token_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            expires = cached[1].expires_at
            if expires is None or expires > self.clock():
                return cached[1]
        principal = await self._load_token(key)
        if principal is not None:
            if len(self._token_cache) >= AUTH_CACHE_MAX:
                self._token_cache.clear()
            self._token_cache[key] = (time.monotonic() + AUTH_CACHE_SECONDS, principal)
        return principal

    async def _load_token(self, key: str) -> Principal | None:
        now = self.clock()
        async with self.db.session() as s:
            repo = TokenRepo(s)
            found = await repo.by_hash(key)
            if found is None:
                return None
            token, user = found
            if token.revoked_at is not None or user.disabled:
                return None
            if token.expires_at is not None and token.expires_at <= now:
                return None
            if token.last_used_at is None or now - token.last_used_at >= TOKEN_TOUCH_INTERVAL:
                await repo.touch(token.id, now)
        role, scope = Role(user.role), Scope(token.scope)
        return Principal(
            kind=PrincipalKind.TOKEN,
            user_id=user.id,
            email=user.email,
            role=role,
            permissions=permissions_for(role, scope),
            scope=scope,
            token_id=token.id,
            expires_at=token.expires_at,
            locale=user.locale,
        )

    async def principal_for_bearer(self, secret: str) -> Principal | None:
        """A bearer header may carry an API token or an API-login session secret."""
        principal = await self.principal_for_token(secret)
        if principal is None:
            found = await self.principal_for_session(secret)
            principal = found[0] if found else None
        return principal

    # --- API tokens ------------------------------------------------------------------

    async def create_token(
        self,
        owner: Principal,
        description: str,
        scope: Scope,
        expires_at: datetime | None = None,
    ) -> tuple[ApiToken, str]:
        """Mint a token for ``owner``; the secret is returned here and never again."""
        if len(description) > TOKEN_DESCRIPTION_MAX:
            raise ValidationError(
                f"description must have at most {TOKEN_DESCRIPTION_MAX} characters"
            )
        if not scope_allowed(owner.role, scope):
            raise PermissionDeniedError(
                f"a {owner.role.value} may not create a token with scope {scope.value!r}"
            )
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            raise ValidationError("expiresAt must be in the future")
        secret = new_secret()
        row = ApiToken(
            token_hash=secret_hash(secret),
            prefix=secret[:10],
            description=description,
            scope=scope.value,
            user_id=owner.user_id,
            created_at=now,
            expires_at=expires_at,
        )
        async with self.db.session() as s:
            await TokenRepo(s).add(row)
        return row, secret

    async def list_tokens(self, viewer: Principal, all_users: bool = False) -> list[ApiToken]:
        async with self.db.session() as s:
            return await TokenRepo(s).list(None if all_users else viewer.user_id)

    async def revoke_token(self, actor: Principal, token_id: int) -> ApiToken:
        """Revoke a token; users revoke their own, admins any. Revoking twice is harmless."""
        async with self.db.session() as s:
            token = await TokenRepo(s).get(token_id)
            if token is None or (token.user_id != actor.user_id and actor.role is not Role.ADMIN):
                raise NotFoundError(f"token {token_id} not found")
            if token.revoked_at is None:
                token.revoked_at = self.clock()
        self.forget_credentials()
        return token


LAST_ADMIN = "this is the last enabled admin; make another admin first"


async def _check_not_last_admin(repo: UserRepo) -> None:
    """Before a change that takes an enabled admin away: the admins are locked (two such
    changes at once each counted two admins, and both went through), then counted."""
    await repo.lock_active_admins()
    if await repo.count_active_admins() <= 1:
        raise ConflictError(LAST_ADMIN)


async def _check_admin_left(repo: UserRepo) -> None:
    """After the change, in its transaction: one admin is still enabled (SQLite locks nothing
    on a read, but takes writes one at a time, so the count after a write is the truth)."""
    await repo.s.flush()
    if await repo.count_active_admins() < 1:
        raise ConflictError(LAST_ADMIN)
