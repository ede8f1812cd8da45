"""What every generated broker configuration shares: the PSK store's format and private files
written whole (through a temporary name, so a broker never reads half of one)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from pathlib import Path


def render_psk(entries: Iterable[tuple[str, str]]) -> str:
    """``identity:hex`` lines: Mosquitto's ``psk_file``, and what GET /broker/psk-file serves."""
    return "".join(f"{uuid}:{key}\n" for uuid, key in entries)


def owner(user: str) -> tuple[int, int] | None:
    """Uid and gid of the broker's system user, when written as root (a broker started as root
    drops to that user, who must read its files); None otherwise or when there is no such user."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def write_private(path: Path, text: str, *, mode: int = 0o600, user: str | None = None) -> None:
    """Write ``path`` whole with ``mode`` (and give it to ``user``, see :func:`owner`)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask, and an old file keeps its own
    ids = owner(user) if user else None
    if ids:
        os.chown(tmp, *ids)
    tmp.replace(path)
