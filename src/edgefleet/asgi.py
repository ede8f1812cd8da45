"""The application ``edgefleet serve`` runs: the REST API (api/) with the console (web/)
beside it, over one container. Neither transport imports the other; this module joins them."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.api import app as api
from edgefleet.bootstrap import Container
from edgefleet.web import console


def create_app(container: Container, *, run_messaging: bool = False) -> FastAPI:
    """The whole HTTP side around an already-built container (the caller owns its lifetime);
    see ``api.app.create_app``."""
    return api.create_app(container, run_messaging=run_messaging, pages=console.mount)
