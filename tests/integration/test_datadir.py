"""Files on disk are the server's alone: the data directory 0700; the SQLite database, its
WAL and shared-memory files, the generated secrets, the embedded broker's files and uploads
0600; a data directory left looser by an older edgefleet is tightened at start, and said so."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgefleet.bootstrap import build, prepare_schema
from edgefleet.settings import Settings
from tests.brokers import free_port
from tests.integration.test_serve import _env, _wait_ready


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    """The usual umask of a shell (022): what left files readable to all before."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_a_fresh_start_of_serve_keeps_every_file_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "serve"],
        env=_env(tmp_path, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", time.monotonic() + 60)
        assert mode(data) == 0o700
        private = [
            "edgefleet.db",
            "edgefleet.db-wal",
            "edgefleet.db-shm",
            "secret.key",
            "mqtt-server.password",
            "embedded-mosquitto.json",
        ]
        assert {name: mode(data / name) for name in private} == dict.fromkeys(private, 0o600)
        broker = Path(json.loads((data / "embedded-mosquitto.json").read_text())["conf"]).parent
        assert mode(broker) == 0o700
        generated = ["mosquitto.conf", "psk.txt", "acl.txt", "passwd"]
        assert {n: mode(broker / n) for n in generated} == dict.fromkeys(generated, 0o600)
        loose = [p for p in broker.iterdir() if mode(p) & 0o077]
        assert loose == []  # what Mosquitto writes itself (pid, log) too: the server's umask
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


async def _one() -> AsyncIterator[bytes]:
    yield b"secret firmware"


async def test_uploads_are_private_in_the_local_store(tmp_path: Path) -> None:
    with umask(0o022):
        c = build(Settings(data_dir=tmp_path / "data"))
        try:
            await prepare_schema(c)
            stored = await c.files.save(_one(), "fw.img")
        finally:
            await c.db.dispose()
    root = c.settings.files_dir
    path = root / stored.key
    assert (mode(root), mode(path.parent), mode(path)) == (0o700, 0o700, 0o600)


async def test_a_start_on_a_loose_data_dir_tightens_it_and_logs_what_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    with umask(0o022):  # what an older edgefleet left behind
        data.mkdir(mode=0o755)
        (data / "secret.key").write_text("k" * 64)
        (data / "mqtt-server.password").write_text("p" * 64)
        (data / "files").mkdir()
        older = sqlite3.connect(data / "edgefleet.db")  # still open: its WAL and SHM exist
        older.execute("PRAGMA journal_mode=WAL")
        older.execute("CREATE TABLE leftover (x)")
        older.commit()
    try:
        loose = ["edgefleet.db", "edgefleet.db-wal", "edgefleet.db-shm", "secret.key"]
        assert all(mode(data / n) == 0o644 for n in loose) and mode(data) == 0o755
        caplog.set_level(logging.WARNING, logger="edgefleet.datadir")
        c = build(Settings(data_dir=data))
        try:
            await prepare_schema(c)
        finally:
            await c.db.dispose()
        assert mode(data) == 0o700 and mode(data / "files") == 0o700
        for name in [*loose, "mqtt-server.password"]:
            assert mode(data / name) == 0o600, name
    finally:
        older.close()
    [line] = [r.getMessage() for r in caplog.records if r.name == "edgefleet.datadir"]
    assert f"{data} 0755→0700" in line and f"{data / 'edgefleet.db-wal'} 0644→0600" in line
    # the next start has nothing to say
    caplog.clear()
    c = build(Settings(data_dir=data))
    await c.db.dispose()
    assert [r for r in caplog.records if r.name == "edgefleet.datadir"] == []
