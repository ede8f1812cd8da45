"""What ``edgefleet serve`` writes to its log under hostile requests: a real server process
(``tests/faults.py`` makes two routes fail), on SQLite and PostgreSQL, in both log formats.

Every secret the test knows (passwords good, bad and new, an API token, a bearer token, a
session cookie, a gateway's PSK, the server's own keys, a secret held in a local variable of
a failing call) is looked for in every line the process wrote.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.brokers import free_port
from tests.faults import FAILURE
from tests.pgserver import PostgresServer
from tests.processes import edgefleet_cli, fresh_database

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, REQUESTS = 10, 5
BURST = CLIENTS * REQUESTS
"""Failing requests: CLIENTS at once, each sending REQUESTS, while /healthz is probed."""


@dataclass
class Secrets:
    admin_password: str = "admin-password-Zq81xv"
    wrong_password: str = "wrong-password-Kw55rp"
    new_password: str = "new-password-Hy27mt"
    body_password: str = "body-password-Lc90sd"
    in_scope: str = "held-in-a-local-Pf38na"
    secret_key: str = "server-secret-key-Vb46ku"
    broker_password: str = "broker-password-Xe13jw"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Empty for SQLite (a file in the data directory), else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    pg_server: PostgresServer = request.getfixturevalue("pg_server")
    with fresh_database(pg_server, "edgefleet_logs") as url:
        yield url


def _env(tmp_path: Path, database_url: str, fmt: str, known: Secrets) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        {
            "EDGEFLEET_DATA_DIR": str(tmp_path / "data"),
            "EDGEFLEET_HTTP__PORT": str(free_port()),
            "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(free_port()),
            "EDGEFLEET_MQTT__SERVER_PORT": str(free_port()),
            "EDGEFLEET_MQTT__SERVER_PASSWORD": known.broker_password,
            "EDGEFLEET_SECRET_KEY": known.secret_key,
            "EDGEFLEET_LOG_FORMAT": fmt,
            "EDGEFLEET_LOG_LEVEL": "DEBUG",
            "EDGEFLEET_TEST_SECRET_IN_SCOPE": known.in_scope,
        }
    )
    if database_url:
        env["EDGEFLEET_DATABASE_URL"] = database_url
    return env


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve was not ready within 60 s")


def _burst_of_500s(base: str, headers: dict[str, str]) -> list[float]:
    """BURST failing requests at once; returns /healthz latencies (s) measured meanwhile."""
    latencies: list[float] = []
    statuses: list[int] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            while not done.is_set():
                start = time.perf_counter()
                statuses.append(client.get("/healthz").status_code)
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    def fail() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(REQUESTS):
                statuses.append(client.get("/api/v1/groups", headers=headers).status_code)

    prober = threading.Thread(target=probe)
    prober.start()
    workers = [threading.Thread(target=fail) for _ in range(CLIENTS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    prober.join()
    assert statuses.count(500) == BURST and statuses.count(200) == len(latencies)
    return latencies


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_hostile_requests_leave_no_secret_and_one_traceback_per_error_in_the_log(
    tmp_path: Path, database_url: str, fmt: str
) -> None:
    known = Secrets()
    env = _env(tmp_path, database_url, fmt, known)
    edgefleet_cli(
        env, "users", "create", "admin@example.com", "--admin", "--password-stdin",
        stdin=known.admin_password + "\n",
    )  # fmt: skip
    edgefleet_cli(env, "users", "create", "ops@example.com", "--role", "operator")
    users = json.loads(edgefleet_cli(env, "users", "list", "--json"))
    ops_id = next(u["id"] for u in users if u["email"] == "ops@example.com")
    api_token = edgefleet_cli(
        env, "tokens", "create", "--user", "admin@example.com", "--scope", "read/write"
    )
    base = f"http://127.0.0.1:{env['EDGEFLEET_HTTP__PORT']}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults", "serve"],
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(base, proc)
            with httpx.Client(base_url=base, timeout=60) as http:
                login = {"email": "admin@example.com", "password": known.admin_password}
                r = http.post("/api/v1/auth/local", json=login)
                assert r.status_code == 200, r.text
                bearer = r.json()["token"]
                r = http.post("/api/v1/auth/login", json=login)
                assert r.status_code == 200, r.text
                session = r.cookies["edgefleet_session"]
                csrf = r.json()["csrfToken"]
                http.cookies.clear()
                by_token = {"mx-api-token": api_token}
                for headers in (
                    by_token,
                    {"Authorization": f"Bearer {bearer}"},
                    {"Cookie": f"edgefleet_session={session}"},
                ):
                    r = http.get("/api/v1/users/me", headers=headers)
                    assert r.status_code == 200, r.text
                update = {"password": known.new_password}
                r = http.patch(f"/api/v1/users/{ops_id}", json=update, headers=by_token)
                assert r.status_code == 200, r.text
                r = http.post(
                    "/api/v1/devices", json={"mac": "00:11:22:33:44:55"}, headers=by_token
                )
                assert r.status_code == 200, r.text
                psk = r.json()["psk"]
                # failures with every credential in scope: headers, cookie, body, a local
                everything = {
                    "mx-api-token": api_token,
                    "Authorization": f"Bearer {bearer}",
                    "Cookie": f"edgefleet_session={session}",
                    "X-CSRF-Token": csrf,
                }
                new_user = {"email": "n@ex.com", "role": "viewer", "password": known.body_password}
                r = http.post("/api/v1/users", json=new_user, headers=everything)
                assert r.status_code == 500, r.text
                latencies = _burst_of_500s(base, everything)
                for path in ("/api/v1/auth/local", "/api/v1/auth/login"):
                    for _ in range(3):
                        r = http.post(
                            path,
                            json={"email": "admin@example.com", "password": known.wrong_password},
                        )
                        assert r.status_code in (401, 429), r.text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    text = log_path.read_text()
    lines = text.splitlines()
    print(
        f"\n[{fmt}, {database_url.split(':', 1)[0] or 'sqlite'}] /healthz during {BURST} "
        f"HTTP 500s from {CLIENTS} clients: {len(latencies)} probes, median "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"{len(lines)} log lines"
    )
    for name, value in {
        **vars(known),
        "api token": api_token,
        "bearer token": bearer,
        "session cookie": session,
        "csrf token": csrf,
        "psk": psk,
    }.items():
        assert value not in text, f"the {name} is in the log"
    failures = BURST + 1
    assert text.count("Traceback (most recent call last)") == failures
    assert text.count(f"RuntimeError: {FAILURE}") == failures
    assert "Exception in ASGI application" not in text
    assert "╭" not in text and "locals" not in text  # no Rich frame or locals panel
    if fmt == "json":
        for line in lines:
            json.loads(line)  # one object per line, tracebacks inside
    # written before the SIGTERM uvicorn re-raises ends the process
    assert "Finished server process" in lines[-1]
