"""``edgefleet groups …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage groups.", no_args_is_help=True)
