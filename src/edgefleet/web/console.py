"""The console's routes, as the application serves them (asgi.py adds them to the API's app)."""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.web import admin, fleetpages, views
from edgefleet.web import tasks as taskpages


def mount(app: FastAPI) -> None:
    """Add the static files and every console page to ``app``, in matching order."""
    app.mount("/static", views.static, name="static")
    app.include_router(views.root)
    app.include_router(views.router)
    app.include_router(taskpages.router)
    app.include_router(admin.router)
    app.include_router(fleetpages.router)
    app.include_router(views.fallback)  # last: any other /console/ URL is an HTML 404
