"""The data directory and the private files in it: the SQLite database with its WAL and
shared-memory files, the server key, the broker password, the embedded broker's pid record,
the local file store. The directory is 0700 and the files 0600 from the start, and at every
start whatever an older edgefleet (or a hand) left looser is tightened, with a log line.

SQLite creates its ``-wal``, ``-shm`` and ``-journal`` files with the database file's own
permissions, so the database file is made 0600 before SQLite first opens it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from edgefleet.settings import Settings

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
SECRET_FILES = ("secret.key", "mqtt-server.password", "embedded-mosquitto.json")
"""Files the server writes into the data directory (settings.py, bootstrap.py)."""


def private_dir(path: Path, *, create: bool = True) -> list[str]:
    """Make ``path`` (and missing parents) a directory only its owner may enter, or tighten
    it; returns what was changed, e.g. ``["/var/lib/edgefleet 0755→0700"]``."""
    if create and not path.exists():
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return _tighten(path, PRIVATE_DIR)


def private_file(path: Path, *, create: bool = False) -> list[str]:
    """Tighten ``path`` to 0600 if it exists (create it empty with that mode first when
    asked); returns what was changed."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    return _tighten(path, PRIVATE_FILE)


def private_sqlite(database: Path) -> list[str]:
    """Create the SQLite file 0600 if it is missing (so its WAL and SHM files are born
    0600 too) and tighten it and its sidecar files; returns what was changed. A missing
    directory is left for SQLite to report."""
    changed = private_file(database, create=database.parent.is_dir())
    for suffix in SQLITE_SIDECARS:
        changed += private_file(database.with_name(database.name + suffix))
    return changed


def prepare(settings: Settings, database: Path | None) -> None:
    """At start: the data directory (made when the server keeps a file there), the files in
    it, the SQLite ``database`` wherever it is, and the local file store's root."""
    changed: list[str] = []
    data_dir = settings.data_dir
    if database is not None or data_dir.exists():
        changed += private_dir(data_dir)
        for name in SECRET_FILES:
            changed += private_file(data_dir / name)
    if database is not None:
        changed += private_sqlite(database)
    if not settings.storage.url.startswith("s3://"):
        changed += private_dir(settings.files_dir, create=False)
    if changed:
        log.warning("permissions tightened (others could read them): %s", ", ".join(changed))


def _tighten(path: Path, mode: int) -> list[str]:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return []
    if current & ~mode == 0:
        return []
    os.chmod(path, current & mode)
    return [f"{path} {current:04o}→{current & mode:04o}"]
