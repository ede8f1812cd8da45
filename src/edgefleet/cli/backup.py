"""``edgefleet backup`` and ``edgefleet restore``: the database and the file store in one
archive (see services/backup/ and docs/backup.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from edgefleet.bootstrap import backup_engine, backup_store
from edgefleet.cli.common import JsonOption, emit, err_console, load_settings
from edgefleet.clock import utcnow
from edgefleet.errors import EdgefleetError
from edgefleet.services.backup import create_backup, restore_backup

PgBinOption = typer.Option(
    None,
    "--pg-bin",
    metavar="DIR",
    help="Where pg_dump and pg_restore of the server's major version are "
    "(default: /usr/lib/postgresql/<major>/bin, then the PATH).",
)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def backup(
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="The archive to write (default: edgefleet-backup-<UTC time>.tar.gz here).",
    ),
    pg_bin: Path = PgBinOption,
    as_json: bool = JsonOption,
) -> None:
    """Back up the database and the file store into one archive (the server may run)."""
    settings = load_settings()
    target = out or Path(f"edgefleet-backup-{utcnow():%Y%m%dT%H%M%SZ}.tar.gz")
    try:
        result = asyncio.run(
            create_backup(
                settings,
                target,
                open_store=lambda: backup_store(settings),
                new_engine=backup_engine(settings),
                pg_bin=pg_bin,
            )
        )
    except EdgefleetError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    summary = result.summary()
    if as_json:
        emit(summary, True)
        return
    typer.echo(
        f"backup written to {summary['archive']} ({_mib(summary['bytes'])}): "
        f"{summary['database']} database at schema {summary['schemaRevision']} "
        f"({summary['rows']} rows), {summary['files']} files ({_mib(summary['fileBytes'])})"
    )
    if summary["secretKey"] == "file":
        typer.echo(
            "the archive holds the server key file (it opens the device PSKs): keep it as "
            "safe as the key itself"
        )
    else:
        typer.echo("the server key (EDGEFLEET_SECRET_KEY) is not in the archive: keep it too")


def restore(
    archive: Path = typer.Argument(..., help="An archive made by `edgefleet backup`."),
    yes: bool = typer.Option(False, "--yes", help="Replace a database that already holds data."),
    check: bool = typer.Option(
        False, "--check", help="Only check the archive and the target; change nothing."
    ),
    pg_bin: Path = PgBinOption,
    as_json: bool = JsonOption,
) -> None:
    """Restore an archive into the configured database and file store (server stopped);
    the schema is then migrated to this edgefleet's."""
    settings = load_settings()

    def say(message: str) -> None:
        if not as_json:
            err_console.print(message)

    try:
        result = asyncio.run(
            restore_backup(
                settings,
                archive,
                replace=yes,
                check_only=check,
                open_store=lambda: backup_store(settings),
                new_engine=backup_engine(settings),
                pg_bin=pg_bin,
                progress=say,
            )
        )
    except EdgefleetError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    summary = result.summary()
    if as_json:
        emit(summary, True)
        return
    if check:
        note = " (its data would be replaced)" if summary["replacedData"] else ""
        typer.echo(f"{archive} is intact and can be restored here{note}")
        return
    typer.echo(
        f"restored the backup of {summary['backupCreatedAt']}: {summary['rows']} rows, "
        f"{summary['files']} files; schema {summary['backupSchemaRevision']} → "
        f"{summary['schemaRevision']}. Start the server again."
    )
