"""``edgefleet devices …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage devices.", no_args_is_help=True)
