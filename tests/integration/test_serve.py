"""``edgefleet serve`` as a user runs it: a real process on embedded defaults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.brokers import free_port


def _wait_ready(
    url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None
) -> httpx.Response:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"serve exited with {proc.returncode}: {err[-2000:]}")
        try:
            r = httpx.get(url, timeout=1)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in time")


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        {
            "EDGEFLEET_DATA_DIR": str(tmp_path / "data"),
            "EDGEFLEET_HTTP__PORT": str(port),
            "EDGEFLEET_MQTT__GATEWAY_HOST": "127.0.0.1",
            "EDGEFLEET_MQTT__GATEWAY_PORT": str(free_port()),
            "EDGEFLEET_MQTT__SERVER_PORT": str(free_port()),
        }
    )
    return env


def test_first_start_prints_a_one_time_admin_password_and_serves(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "serve"],
        env=_env(tmp_path, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        password = None
        deadline = time.monotonic() + 60
        while password is None and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if "password:" in line:
                password = line.split("password:", 1)[1].strip()
            if not line and proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
        assert password
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/readyz", deadline)
        r = httpx.post(
            base + "/api/v1/auth/local", json={"email": "admin@localhost", "password": password}
        )
        assert r.status_code == 200 and r.json()["mustChangePassword"] is True
        assert (tmp_path / "data" / "edgefleet.db").exists()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert password not in err  # printed once on stdout, never logged
    # a second start finds users and prints no password
    port2 = free_port()
    again = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "serve"],
        env=_env(tmp_path, port2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port2}/healthz", time.monotonic() + 60)
    finally:
        again.terminate()
        out2, _ = again.communicate(timeout=20)
    assert "password" not in out2


def test_busy_port_is_reported_clearly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli.main", "serve"],
            env=_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2
    assert f"port {port} on 127.0.0.1 is busy" in r.stderr


@pytest.mark.parametrize("record", ["kept", "lost"])
def test_a_broker_left_by_a_killed_server_is_stopped_at_the_next_start(
    tmp_path: Path, record: str
) -> None:
    """Run as root, Mosquitto drops to its own user, which clears the parent-death signal: a
    server killed with SIGKILL leaves its broker holding the ports. A CLI command run beside
    the server leaves the broker's record alone, and the next start stops that broker, found
    by its record or, with the record lost, by its command line."""
    env = _env(tmp_path, free_port())
    cmd = [sys.executable, "-m", "edgefleet.cli.main", "serve"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "data" / "embedded-mosquitto.json"
    try:
        _wait_ready(f"http://127.0.0.1:{env['EDGEFLEET_HTTP__PORT']}/readyz", time.monotonic() + 60)
        written = path.read_text()
        broker = json.loads(written)["pid"]
        _cli(env, "users", "list")
        assert path.read_text() == written  # a command beside the server leaves it alone
    finally:
        first.kill()
        first.wait()
    if record == "lost":
        path.unlink()
    env["EDGEFLEET_HTTP__PORT"] = str(free_port())  # the same broker ports as before
    again = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        r = _wait_ready(
            f"http://127.0.0.1:{env['EDGEFLEET_HTTP__PORT']}/readyz", time.monotonic() + 60, again
        )
        assert r.json()["checks"] == {"database": True, "broker": True, "workers": True}
        assert not Path(f"/proc/{broker}").exists() or _zombie(broker)
        assert json.loads(path.read_text())["pid"] != broker
        for port in (env["EDGEFLEET_MQTT__GATEWAY_PORT"], env["EDGEFLEET_MQTT__SERVER_PORT"]):
            socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    finally:
        again.terminate()
        again.communicate(timeout=20)
    assert not path.exists()  # a clean stop removes it


def _zombie(pid: int) -> bool:
    return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_sigterm_ends_open_event_streams_and_stops(tmp_path: Path) -> None:
    """uvicorn waits for open responses before shutting down: a live event stream must not
    keep the server from stopping."""
    port = free_port()
    env = _env(tmp_path, port)
    _cli(env, "users", "create", "ops@example.com", "--role", "viewer")
    token = _cli(env, "tokens", "create", "--user", "ops@example.com", "--scope", "read")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/readyz", time.monotonic() + 60)
        headers = {"mx-api-token": token.strip()}
        with httpx.stream(
            "GET", base + "/api/v1/events/stream", headers=headers, timeout=30
        ) as stream:
            assert stream.status_code == 200
            proc.terminate()
            proc.wait(timeout=30)  # exits with the stream still open on this side
            for _ in stream.iter_bytes():  # which the server ended
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
