"""``edgefleet tokens …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage tokens.", no_args_is_help=True)
