"""REST fuzz test (issue 15): no client input gives a 5xx, and none stalls the server.

schemathesis generates requests for every operation of our own ``/openapi.json`` (the
ThingsPro-compatible ones included), both data that fits the schema and data that breaks it
(wrong types, numbers past the bounds, strings past the lengths), against a real uvicorn on
SQLite and on PostgreSQL, as an admin (so deep routes are reached) and with no credentials.
The console's pages are not in the schema: test_hostile_requests.py sends them hostile input.
Meanwhile a prober measures ``/healthz``: the worst answer must come within
``HEALTHZ_LIMIT`` (a liveness property: one hostile request must not stall everyone).

Server, fuzzer and prober are three processes: each has its own interpreter lock, so the
fuzzer's CPU (hypothesis) neither slows the server's loop nor delays the prober's clock. The
test's own handle on the database only makes admins.

Reproducible and bounded: hypothesis is derandomized (a fixed seed per operation), its example
database off, no shrinking. The cases are generated once per process, before ``/healthz`` is
timed, and sent in every run (SQLite, PostgreSQL; admin, anonymous); ``EXAMPLES`` per
operation and mode keeps the four runs within two minutes on a loaded 2-core box.

No 5xx is accepted, 503 included: the gateway-facing routes run with messaging off and answer
404 (unknown gateway) or 409 (not online) before they would need the broker, so "broker
unavailable" (503, a documented outcome when the broker is down) cannot come from input here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

from edgefleet.bootstrap import build
from edgefleet.db.engine import Database
from edgefleet.domain.auth import Role
from edgefleet.settings import Settings
from tests.brokers import free_port
from tests.conftest import Callers
from tests.httpserver import app_process

HEALTHZ_LIMIT = 1.0
"""Seconds the slowest /healthz answer may take while the fuzzer runs."""

EXAMPLES = {"admin": 6, "anonymous": 2}
"""Cases per operation and generation mode (positive, negative)."""

EXCLUDED = {
    ("GET", "/api/v1/events/stream"): (
        "Server-Sent Events: the answer never ends; its filters are the list's, fuzzed "
        "through GET /api/v1/events, and tests/integration/test_events_api.py covers the stream"
    ),
}
"""Operations not fuzzed, each with its reason."""

LAST = {("POST", "/api/v1/auth/logout")}
"""Sent last: as the admin it ends the session every other request is made with."""

WEBHOOK = ("POST", "/api/v1/notifications")
"""Subscribing calls the endpoint given (see ``to_loopback``)."""

Cases = list[tuple[GenerationMode, Case]]  # type: ignore[type-arg]
_generated: dict[tuple[str, str], Cases] = {}


@dataclass
class Finding:
    mode: str
    method: str
    path: str
    status: int
    body: str
    curl: str

    def __str__(self) -> str:
        return f"{self.status} {self.method} {self.path} [{self.mode}]: {self.body}\n  {self.curl}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent on each operation."""

    def slowest(self, n: int = 5) -> str:
        top = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {v:.1f} s" for k, v in top)


# --- the prober: its own process -------------------------------------------------------------


def probe(url: str, doing: Any, ready: Event, stop: Event, out: Connection) -> None:
    """Ask ``/healthz`` every 50 ms until ``stop`` (``ready`` once a first, untimed answer
    came); send back the count, the five slowest answers (with what the fuzzer was doing) and
    the failures."""
    slowest: list[tuple[float, str]] = []
    failures: list[str] = []
    probes = 0
    with httpx.Client(timeout=10) as client:
        client.get(f"{url}/healthz")  # not timed: the first request of a process imports code
        ready.set()
        while not stop.is_set():
            start, before = time.perf_counter(), doing.value.decode()
            try:
                r = client.get(f"{url}/healthz")
                if r.status_code != 200:
                    failures.append(f"/healthz answered {r.status_code}")
            except httpx.HTTPError as exc:
                failures.append(f"/healthz: {exc!r}")
            took = time.perf_counter() - start
            slowest = sorted([*slowest, (took, f"{before} .. {doing.value.decode()}")])[-5:]
            probes += 1
            stop.wait(0.05)
    out.send((probes, slowest[::-1], failures))


@dataclass
class Prober:
    doing: Any
    """What the fuzzer sends now, shared with the prober to name what a slow probe met."""
    probes: int = 0
    slowest: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return self.slowest[0][0] if self.slowest else 0.0

    def now(self, what: str) -> None:
        self.doing.value = what.encode()[:255]


@contextmanager
def probing(url: str) -> Iterator[Prober]:
    ctx = multiprocessing.get_context("spawn")  # nothing of this process's threads or loop
    doing = ctx.Array("c", 256)
    ready, stop = ctx.Event(), ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=probe, args=(url, doing, ready, stop, send), name="healthz-prober")
    proc.start()
    prober = Prober(doing)
    try:
        assert ready.wait(60), "the prober did not start within 60 s"
        yield prober
    finally:
        stop.set()
        if receive.poll(30):
            prober.probes, prober.slowest, prober.failures = receive.recv()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


# --- the fuzzer -------------------------------------------------------------------------------


def examples(strategy: Any, n: int) -> list[Case]:  # type: ignore[type-arg]
    """``n`` cases of ``strategy``, the same ones every time."""
    cases: list[Case] = []  # type: ignore[type-arg]

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def collect(case: Case) -> None:  # type: ignore[type-arg]
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        pass  # nothing to break: an operation without parameters or body has no negative case
    return cases


def generated(op: Any, n: int) -> Cases:
    """``n`` positive and ``n`` negative cases of ``op``, made once per process."""
    key = (op.method.upper(), op.path)
    if key not in _generated:
        _generated[key] = [
            (mode, case)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for case in examples(op.as_strategy(generation_mode=mode), n)
        ]
    return _generated[key]


def to_loopback(case: Case, port: int) -> None:  # type: ignore[type-arg]
    """A webhook endpoint the fuzzer made up points at ``127.0.0.1:port`` (nothing listens),
    whatever its host: subscribing calls it, and tests reach nothing beyond loopback."""
    body = case.body
    endpoint = body.get("endpoint") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(endpoint, str):
        try:
            parts = urlsplit(endpoint.strip())
        except ValueError:
            return  # the server refuses it as well, without calling anything
        if parts.netloc:
            body["endpoint"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def operations(openapi: dict[str, Any]) -> list[Any]:
    """The schema's operations, less ``EXCLUDED``, ``LAST`` last; their cases generated now
    (once per process), so that no generation runs while ``/healthz`` is timed."""
    schema = schemathesis.openapi.from_dict(openapi)
    ops = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(ops) > 60, "the schema lost its operations"
    ops = [op for op in ops if (op.method.upper(), op.path) not in EXCLUDED]
    ops.sort(key=lambda op: (op.method.upper(), op.path) in LAST)
    for op in ops:
        generated(op, max(EXAMPLES.values()))
    return ops


def fuzz(
    base_url: str,
    who: str,
    headers: Callable[[], dict[str, str]],
    ops: list[Any],
    prober: Prober,
) -> Report:
    """Every operation's cases, sent with fresh ``headers``; what answered 5xx."""
    webhook_port = free_port()
    report = Report()
    with requests.Session() as session:
        for op in ops:
            key = (op.method.upper(), op.path)
            started = time.perf_counter()
            cases = generated(op, max(EXAMPLES.values()))
            n = EXAMPLES[who]
            positive = [c for c in cases if c[0] is GenerationMode.POSITIVE][:n]
            negative = [c for c in cases if c[0] is GenerationMode.NEGATIVE][:n]
            sent = headers()
            for mode, case in positive + negative:
                prober.now(f"{key[0]} {key[1]} [{mode.value}]")
                if key == WEBHOOK:
                    to_loopback(case, webhook_port)
                r = case.call(base_url=base_url, session=session, headers=sent, timeout=30)
                if r.status_code >= 500:
                    report.findings.append(
                        Finding(
                            mode.value,
                            case.method,
                            case.formatted_path,
                            r.status_code,
                            r.text[:300],
                            case.as_curl_command(headers=sent),
                        )
                    )
            report.seconds[" ".join(key)] = time.perf_counter() - started
    return report


def server_environment(settings: Settings) -> dict[str, str]:
    """The test's settings for the server process, login throttling as loose as it goes (logins
    are fuzzed too: more of them reach the database) and webhook confirmations short."""
    return {
        **os.environ,
        "EDGEFLEET_DATA_DIR": str(settings.data_dir),
        "EDGEFLEET_DATABASE_URL": settings.resolved_database_url,
        "EDGEFLEET_SECRET_KEY": settings.secret_key.get_secret_value(),
        "EDGEFLEET_LOGIN__MAX_RETRY": "10",
        "EDGEFLEET_LOGIN__ADDRESS_MAX_RETRY": "1000",
        "EDGEFLEET_EVENTS__WEBHOOK_TIMEOUT_SECONDS": "2",
        "EDGEFLEET_LOG_LEVEL": "WARNING",
    }


@pytest.mark.parametrize("who", ["admin", "anonymous"])
async def test_no_input_gives_a_5xx_or_stalls_healthz(
    settings: Settings, database: Database, tmp_path: Path, who: str
) -> None:
    container = build(settings, db=database)  # the test's own handle, to make admins
    loop = asyncio.get_running_loop()
    admin: dict[str, str] = {}

    def credentials() -> dict[str, str]:
        """An admin's login, made again when the fuzzer deleted, disabled, demoted or logged
        it out (ids 1, 2, … are what it tries first)."""
        if who == "anonymous":
            return {}
        if admin:
            r = requests.get(f"{base_url}/api/v1/users/me", headers=admin, timeout=30)
            if r.status_code == 200 and r.json()["role"] == "admin":
                return dict(admin)
        made = asyncio.run_coroutine_threadsafe(Callers(container).user(Role.ADMIN), loop)
        admin.clear()
        admin.update(made.result(60).headers)
        return dict(admin)

    log = tmp_path / "server.log"
    with app_process(server_environment(settings), log) as base_url:  # messaging off
        openapi = (await asyncio.to_thread(requests.get, f"{base_url}/openapi.json")).json()
        ops = await asyncio.to_thread(operations, openapi)
        with probing(base_url) as prober:
            report = await asyncio.to_thread(fuzz, base_url, who, credentials, ops, prober)
    print(f"fuzzed {len(report.seconds)} operations; slowest: {report.slowest()}")
    print(f"/healthz: {prober.probes} probes, slowest: {prober.slowest}")
    server_log = log.read_text(errors="replace")[-3000:]
    assert not report.findings, "\n".join(map(str, report.findings)) + "\n" + server_log
    assert prober.probes > 10 and not prober.failures, prober.failures
    assert prober.worst <= HEALTHZ_LIMIT, (
        f"/healthz took {prober.worst:.2f} s at worst: {prober.slowest}"
    )
