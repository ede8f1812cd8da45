"""Password guessing: logins and password changes throttled per (account, address) and per
address with doubling delays, decided atomically (a burst of guesses gets no more checks
than the rules allow), never locking an account for everyone.

Time is the accounts service's clock, held still and moved by the tests; the number of
passwords checked is read from the server's own metric."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select

from edgefleet.asgi import create_app
from edgefleet.bootstrap import Container, build
from edgefleet.db.engine import Database
from edgefleet.db.tables import LoginFailure
from edgefleet.domain.auth import Role
from edgefleet.services.audit import ANONYMOUS_WRITERS
from edgefleet.services.passwords import PasswordHasher
from edgefleet.settings import LoginSettings, Settings
from tests.conftest import Callers

PASSWORD = "correct horse battery"
ATTACKER = "203.0.113.66"
USER_ADDRESS = "198.51.100.20"


class FrozenClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(container: Container) -> FrozenClock:
    frozen = FrozenClock()
    container.accounts.clock = frozen
    return frozen


def checked() -> float:
    """Passwords checked so far in this process (the metric the server exports)."""
    return sum(
        REGISTRY.get_sample_value("edgefleet_password_verifications_total", {"result": r}) or 0
        for r in ("match", "mismatch")
    )


@asynccontextmanager
async def at(container: Container, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app whose requests come from ``address``."""
    transport = httpx.ASGITransport(app=create_app(container), client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def login(c: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await c.post("/api/v1/auth/local", json={"email": email, "password": password})


async def test_a_burst_of_wrong_guesses_gets_no_more_checks_than_the_limit(
    container: Container, callers: Callers, clock: FrozenClock
) -> None:
    user = await callers.user(Role.ADMIN)
    limit = container.settings.login.max_retry
    before = checked()
    async with at(container, ATTACKER) as attacker:
        answers = await asyncio.gather(
            *(login(attacker, user.email, f"guess number {i}") for i in range(60))
        )
        codes = sorted(r.status_code for r in answers)
        print(
            f"\n60 concurrent wrong guesses: {codes.count(401)} checked (401), "
            f"{codes.count(429)} throttled (429); passwords checked: {checked() - before:g}"
        )
        assert codes == [401] * limit + [429] * (60 - limit)
        assert checked() - before == limit
        # the right password is refused too while the delay runs, and not even checked
        r = await login(attacker, user.email, PASSWORD)
        assert r.status_code == 429 and r.json()["message"].startswith("too many failed logins")
        assert int(r.headers["retry-after"]) == 1
        assert checked() - before == limit
        clock.advance(1)
        assert (await login(attacker, user.email, PASSWORD)).status_code == 200


async def test_delays_double_up_to_ban_time_and_are_forgotten_after_find_time(
    settings: Settings, database: Database
) -> None:
    cfg = settings.login = LoginSettings(max_retry=2, ban_time=60, find_time=120)
    container = build(settings, db=database)
    clock = FrozenClock()
    container.accounts.clock = clock
    user = await Callers(container).user(Role.VIEWER)
    async with at(container, ATTACKER) as attacker:
        for _ in range(cfg.max_retry):
            assert (await login(attacker, user.email, "wrong guess")).status_code == 401
        waits: list[int] = []
        while not waits or waits[-1] < cfg.ban_time:
            refused = await login(attacker, user.email, "wrong guess")
            assert refused.status_code == 429
            waits.append(int(refused.headers["retry-after"]))
            clock.advance(waits[-1] - 0.5)
            assert (await login(attacker, user.email, "wrong guess")).status_code == 429
            clock.advance(0.5)
            assert (await login(attacker, user.email, "wrong guess")).status_code == 401
        assert waits == [1, 2, 4, 8, 16, 32, 60]
        r = await login(attacker, user.email, PASSWORD)
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 60
        # quiet for find_time after the last delay ran out: the count starts again
        clock.advance(60 + cfg.find_time)
        for _ in range(cfg.max_retry):
            assert (await login(attacker, user.email, "wrong guess")).status_code == 401
        assert (await login(attacker, user.email, PASSWORD)).status_code == 429


async def test_one_address_guessing_locks_nobody_out(
    container: Container, callers: Callers, clock: FrozenClock
) -> None:
    """Five anonymous requests used to lock any account, the first admin's included, for
    everyone: now only the guessing address waits, and only for that account."""
    first = await container.accounts.ensure_first_admin("admin@localhost")
    assert first is not None
    admin, one_time = first
    other = await callers.user(Role.OPERATOR)
    limit = container.settings.login.max_retry
    async with at(container, ATTACKER) as attacker, at(container, USER_ADDRESS) as owner:
        for _ in range(limit + 3):
            await login(attacker, admin.email, "admin")
        assert (await login(attacker, admin.email, one_time)).status_code == 429
        assert (await login(owner, admin.email, one_time)).status_code == 200
        # the guessing address may still log in to another account
        assert (await login(attacker, other.email, PASSWORD)).status_code == 200
        # and a success starts the count of its own address again
        for _ in range(limit - 1):
            assert (await login(owner, other.email, "typo in it")).status_code == 401
        assert (await login(owner, other.email, PASSWORD)).status_code == 200
        for _ in range(limit):
            assert (await login(owner, other.email, "typo in it")).status_code == 401


async def test_one_address_is_throttled_over_all_accounts(
    settings: Settings, database: Database
) -> None:
    settings.login = LoginSettings(address_max_retry=3)
    container = build(settings, db=database)
    clock = FrozenClock()
    container.accounts.clock = clock
    callers = Callers(container)
    victim = await callers.user(Role.VIEWER)
    async with at(container, ATTACKER) as attacker, at(container, USER_ADDRESS) as owner:
        for i in range(3):  # each account once: no account's own limit is reached
            assert (await login(attacker, f"guess{i}@example.com", "123456")).status_code == 401
        r = await login(attacker, victim.email, PASSWORD)
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 1
        assert (await login(owner, victim.email, PASSWORD)).status_code == 200
        clock.advance(1)
        assert (await login(attacker, victim.email, PASSWORD)).status_code == 200
        # a success does not wipe the address's failures on other accounts
        assert (await login(attacker, "guess9@example.com", "123456")).status_code == 401
        assert (await login(attacker, victim.email, PASSWORD)).status_code == 429


async def test_an_ipv6_client_is_throttled_by_its_64_not_by_each_address(
    settings: Settings, database: Database
) -> None:
    """One subscriber holds a whole /64: an attempt from each of its addresses is still one
    client guessing (attack on issue 17: a fresh address per attempt kept the hashing pool
    full); another /64 is another client."""
    settings.login = LoginSettings(address_max_retry=3)
    container = build(settings, db=database)
    container.accounts.clock = FrozenClock()
    victim = await Callers(container).user(Role.VIEWER)
    for i in range(3):
        async with at(container, f"2001:db8:7:1::{i + 1:x}") as guesser:
            assert (await login(guesser, f"guess{i}@example.com", "123456")).status_code == 401
    async with at(container, "2001:db8:7:1:ffff::9") as guesser:
        assert (await login(guesser, victim.email, PASSWORD)).status_code == 429
    async with at(container, "2001:db8:7:2::1") as neighbour:
        assert (await login(neighbour, victim.email, PASSWORD)).status_code == 200


async def test_password_change_is_throttled_like_a_login(
    client: httpx.AsyncClient, callers: Callers, container: Container, clock: FrozenClock
) -> None:
    """A stolen session cannot guess the current password faster than a login could."""
    user = await callers.user(Role.OPERATOR)
    limit = container.settings.login.max_retry
    before = checked()

    async def change(current: str) -> httpx.Response:
        return await client.put(
            "/api/v1/users/me/password",
            headers=user.headers,
            json={"currentPassword": current, "newPassword": "the next long passphrase"},
        )

    answers = await asyncio.gather(*(change(f"guess number {i}") for i in range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [401] * limit + [429] * (20 - limit)
    r = await change(PASSWORD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 1
    assert checked() - before == limit
    # the same throttle key as a login to that account from that address
    assert (await login(client, user.email, PASSWORD)).status_code == 429
    clock.advance(1)
    assert (await change(PASSWORD)).status_code == 200


@pytest.mark.production_password_cost  # the thread must still be busy when the others come
async def test_a_flood_past_the_hashing_queue_is_refused_and_not_counted(
    container: Container, database: Database
) -> None:
    """One hashing thread and no queue: of simultaneous logins, those that find the thread
    busy are answered 503 at once, and their attempts are taken back (nothing was checked)."""
    container.accounts.passwords = PasswordHasher(workers=1, queue=0)
    async with at(container, ATTACKER) as attacker:
        answers = await asyncio.gather(
            *(login(attacker, f"someone{i}@example.com", "wrong") for i in range(6))
        )
    codes = [r.status_code for r in answers]
    assert set(codes) == {401, 503}, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "retry" in busy.json()["message"]
    async with database.session() as s:
        rows = await s.scalar(select(func.count()).select_from(LoginFailure))
    assert rows == 2 * codes.count(401)  # per checked guess: its (account, address), its address


class PoolWatch:
    """How many database connections the app held at once, at most (pool checkouts)."""

    def __init__(self, database: Database) -> None:
        self.pool = database.engine.sync_engine.pool
        self.held = self.peak = 0

    def _out(self, *_: object) -> None:
        self.held += 1
        self.peak = max(self.peak, self.held)

    def _in(self, *_: object) -> None:
        self.held -= 1

    def __enter__(self) -> PoolWatch:
        event.listen(self.pool, "checkout", self._out)
        event.listen(self.pool, "checkin", self._in)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.pool, "checkout", self._out)
        event.remove(self.pool, "checkin", self._in)


async def test_a_burst_from_one_address_holds_one_database_connection_at_a_time(
    container: Container, callers: Callers, database: Database, clock: FrozenClock
) -> None:
    """200 concurrent attempts from one address each took a connection of the pool and
    waited in it for the key's lock (an admin's GET took 16-30 s meanwhile on a real server,
    PostgreSQL): attempts on one key now wait for each other in the process, and once the
    key is known to be waiting, are refused without asking the database."""
    user = await callers.user(Role.VIEWER)
    limit = container.settings.login.max_retry
    async with at(container, ATTACKER) as attacker:
        with PoolWatch(database) as pool:
            answers = await asyncio.gather(
                *(login(attacker, user.email, f"guess number {i}") for i in range(60))
            )
        codes = sorted(r.status_code for r in answers)
        assert codes == [401] * limit + [429] * (60 - limit)
        # the checked guesses' own steps (the account's lookup, recording the failure) and
        # the audit of anonymous requests (ANONYMOUS_WRITERS) may overlap; the throttle's
        # decisions never do
        assert pool.peak <= 1 + limit + ANONYMOUS_WRITERS, pool.peak
        with PoolWatch(database) as pool:
            answers = await asyncio.gather(
                *(login(attacker, user.email, f"guess number {i}") for i in range(100))
            )
        assert {r.status_code for r in answers} == {429}
        assert pool.peak <= ANONYMOUS_WRITERS, pool.peak  # their audit entries only
