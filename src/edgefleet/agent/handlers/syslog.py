"""``POST /system/syslog {url?, headers?, lines?}``: recent system logs into a gzip file.

The source is ``syslogCommand`` (``{lines}`` replaced); by default ``journalctl`` when it is
installed, else the last lines of the first readable ``syslogFiles``. With a ``url`` the file
is uploaded there as multipart field ``file`` and the answer carries the server's ``url``, as
on ThingsPro; without one the answer says where the file is on the gateway.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from edgefleet.agent.plugin import AgentContext, HandlerError, Reply, Request, Route
from edgefleet.agent.util import (
    UploadTarget,
    expand,
    parse,
    prune,
    run_command,
    upload_into,
)

log = logging.getLogger(__name__)

JOURNALCTL = ["journalctl", "--no-pager", "--output=short-iso", "--lines={lines}"]
KEEP = 5


class SyslogBody(UploadTarget):
    lines: int | None = Field(default=None, ge=1, le=1_000_000)


def tail(paths: Iterable[Path], lines: int) -> tuple[bytes, Path | None]:
    """The last ``lines`` lines of the first readable file."""
    for path in paths:
        try:
            with path.open("rb") as f:
                return b"".join(deque(f, maxlen=lines)), path
        except OSError:
            continue
    return b"", None


class Syslog:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def routes(self) -> Iterable[Route]:
        return [Route("post", "/system/syslog", self.collect)]

    def command(self) -> list[str] | None:
        configured = self.ctx.config.syslogCommand
        if configured is None:
            return list(JOURNALCTL) if shutil.which("journalctl") else None
        return configured or None

    async def _gather(self, lines: int) -> tuple[bytes, str]:
        argv = self.command()
        if argv is not None:
            argv = expand(argv, lines=str(lines))
            result = await run_command(argv, self.ctx.config.commandTimeout)
            if result.ok:
                return result.stdout, argv[0]
            log.warning("syslog command %s; reading files instead", result.explain())
        text, source = await asyncio.to_thread(tail, self.ctx.config.syslogFiles, lines)
        if source is None:
            raise HandlerError(500, "no log source: the command failed and no log file is readable")
        return text, str(source)

    async def collect(self, req: Request) -> Reply:
        body = parse(SyslogBody, req.data)
        lines = body.lines or self.ctx.config.syslogLines
        text, source = await self._gather(lines)
        directory = self.ctx.path("syslog")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dest = directory / f"syslog-{stamp}-{time.monotonic_ns() % 10**6}.log.gz"

        def write() -> None:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
                gz.write(text)

        await asyncio.to_thread(write)
        prune(directory, "syslog-*.log.gz", KEEP)
        out: dict[str, Any] = {
            "path": str(dest),
            "size": dest.stat().st_size,
            "lines": text.count(b"\n"),
            "source": source,
        }
        await upload_into(
            out, self.ctx.http, body.url, body.headers, dest, self.ctx.config.downloadTimeout
        )
        return 200, out


def plugin(ctx: AgentContext) -> Iterable[Route]:
    return Syslog(ctx).routes()
