"""``edgefleet``: run the server and administer it from the shell."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from types import FrameType

import typer

from edgefleet import __version__
from edgefleet.cli import (
    backup,
    broker,
    devices,
    events,
    groups,
    node,
    simulate,
    tokens,
    users,
)
from edgefleet.cli.common import err_console, load_settings, run
from edgefleet.errors import EdgefleetError
from edgefleet.processes import freeze_heap

app = typer.Typer(
    help="edgefleet: fleet manager for industrial IoT gateways (ThingsPro-compatible).",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def _options(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """edgefleet: fleet manager for industrial IoT gateways (ThingsPro-compatible)."""


config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(users.app, name="users")
app.add_typer(tokens.app, name="tokens")
app.add_typer(devices.app, name="devices")
app.add_typer(groups.app, name="groups")
app.add_typer(events.app, name="events")
app.add_typer(broker.app, name="broker-config")
app.command("broker-node")(node.broker_node)
app.command("simulate")(simulate.simulate)
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings as JSON, secrets masked."""
    typer.echo(json.dumps(load_settings().masked(), indent=2))


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    from edgefleet.bootstrap import migrate as migrate_schema

    try:
        typer.echo(migrate_schema(load_settings()))
    except EdgefleetError as exc:  # a schema newer than this code that does not run with it
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                err_console.print(
                    f"[red]error:[/red] port {port} on {host} is busy (another program listens "
                    "there). Choose another with --port or EDGEFLEET_HTTP__PORT."
                )
                raise typer.Exit(2) from exc
            raise


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (default from settings)."),
    port: int = typer.Option(None, help="Port to listen on (default from settings)."),
    migrate_schema: bool = typer.Option(
        None, "--migrate/--no-migrate", help="Migrate the schema first (default: on for SQLite)."
    ),
) -> None:
    """Run the server (web API; all roles in one process)."""
    import uvicorn

    from edgefleet import logs
    from edgefleet.asgi import create_app
    from edgefleet.bootstrap import build, prepare_schema

    # nothing the server writes is for other users (database, keys, uploads, the embedded
    # broker's files): a second line of defence behind the explicit modes (datadir.py)
    os.umask(0o077)
    settings = load_settings()
    if host:
        settings.http.host = host
    if port:
        settings.http.port = port
    logs.configure(settings.log_level, settings.log_format)
    _check_port(settings.http.host, settings.http.port)

    async def main() -> None:
        container = build(settings)
        try:
            await prepare_schema(container, migrate=migrate_schema)
            first = await container.accounts.ensure_first_admin(settings.admin_email)
            if first is not None:
                user, password = first
                banner = (
                    "\n  First start: an admin account was created.\n"
                    f"    email:    {user.email}\n"
                    f"    password: {password}\n"
                    "  This one-time password is shown once and must be changed at first login.\n"
                )
                sys.stdout.write(banner + "\n")
                sys.stdout.flush()
            config = uvicorn.Config(
                create_app(container, run_messaging=True),
                host=settings.http.host,
                port=settings.http.port,
                log_config=None,
                # X-Forwarded-* are honoured by the app itself, from http.trusted_proxies
                # only (api/app.py); uvicorn's default would trust 127.0.0.1
                proxy_headers=False,
                server_header=False,
            )
            loop = asyncio.get_running_loop()

            class _Server(uvicorn.Server):
                """uvicorn waits for open responses before the app's shutdown runs: end the
                live event streams (clients resume with Last-Event-ID) when asked to exit."""

                def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                    loop.call_soon_threadsafe(container.event_log.feed.end_streams)
                    super().handle_exit(sig, frame)

                @contextlib.contextmanager
                def capture_signals(self) -> Iterator[None]:
                    with super().capture_signals():
                        try:
                            yield
                        finally:
                            # uvicorn re-raises a captured SIGTERM next, which ends the
                            # process at once: write the queued log lines first
                            logs.flush()

            freeze_heap()
            await _Server(config).serve()
        finally:
            await container.close()

    try:
        asyncio.run(main())
    except EdgefleetError as exc:
        logs.flush()  # what the server logged comes before the reason it stops
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def main() -> None:
    app()


# keep `run` importable from here for command modules that prefer one import
__all__ = ["app", "main", "run"]


if __name__ == "__main__":
    main()
