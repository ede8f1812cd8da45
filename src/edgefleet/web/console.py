"""The console's routes, as the application serves them (asgi.py adds them to the API's app)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from edgefleet.web import fleetpages, views
from edgefleet.web.admin import audit, events, settings, tokens, users
from edgefleet.web.tasks import groups, tasks

PAGES: tuple[APIRouter, ...] = (
    views.router,
    groups.router,
    tasks.router,
    events.router,
    tokens.router,
    users.router,
    audit.router,
    settings.router,
    fleetpages.router,
)
"""The routers of every console page and fragment under ``/console``, in matching order."""


def mount(app: FastAPI) -> None:
    """Add the static files and every console page to ``app``, in matching order."""
    app.mount("/static", views.static, name="static")
    app.include_router(views.root)
    for router in PAGES:
        app.include_router(router)
    app.include_router(views.fallback)  # last: any other /console/ URL is an HTML 404
