"""What every command shares: settings, the container, output as table or JSON, errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.bootstrap import Container, build, prepare_schema
from edgefleet.errors import EdgefleetError
from edgefleet.services.audit import Actor
from edgefleet.settings import Settings

T = TypeVar("T")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the bad setting
        err_console.print(f"[red]error:[/red] invalid configuration: {exc}")
        raise typer.Exit(2) from exc


def cli_actor() -> Actor:
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Actor("cli", name, f"cli:{name}")


def run(work: Callable[[Container], Awaitable[T]], *, migrate: bool | None = None) -> T:
    """Build the container, make sure the schema is current, run ``work``, close."""
    settings = load_settings()

    async def main() -> T:
        container = build(settings)
        try:
            await prepare_schema(container, migrate=migrate)
            result = await work(container)
            await container.events.flush()  # what the command did (registrations, …)
            return result
        finally:
            await container.close()

    try:
        return asyncio.run(main())
    except EdgefleetError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


def emit(rows: Any, as_json: bool, columns: Sequence[str] = ()) -> None:
    """JSON for scripts (anything JSON-able), else a table of the dict or dicts given."""
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    items = [rows] if isinstance(rows, dict) else list(rows)
    if not items:
        console.print("(none)")
        return
    cols = list(columns) or list(items[0].keys())
    table = Table(*cols)
    for item in items:
        table.add_row(*("" if item.get(c) is None else str(item.get(c)) for c in cols))
    console.print(table)
