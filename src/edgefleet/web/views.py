"""The web console: server-rendered pages (Jinja2) made live with htmx.

Pages and the fragments they refresh are rendered here, from the same services the API
uses, for the caller's cookie session. Every change a page makes goes to the JSON API
(`/api/v1`) from the browser (htmx with its JSON encoding, the session's CSRF token in a
header): the console has no write path of its own, so it cannot grant what the API refuses,
and every change lands in the audit log like any other. Live updates come from the event
stream (`/api/v1/events/stream`): each event makes the page's fragments reload.

No asset comes from a CDN: htmx, its JSON extension and Chart.js are committed under
``static/vendor`` (scripts/vendor-assets.sh fetches them from the npm registry, pinned and
checked by SHA256SUMS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from edgefleet import __version__
from edgefleet.api.deps import SESSION_COOKIE, ContainerDep
from edgefleet.bootstrap import Container
from edgefleet.db.repos.devices import DeviceFilter
from edgefleet.domain.auth import Permission, Principal
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.domain.events import AlarmState
from edgefleet.domain.query import parse
from edgefleet.domain.tasks import TASK_OPEN, TaskKind
from edgefleet.errors import EdgefleetError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")
router = APIRouter(prefix="/console", include_in_schema=False)
root = APIRouter(include_in_schema=False)

PAGE_SIZE = 50


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page, and what the page may offer them."""

    principal: Principal
    csrf: str

    @property
    def can_write(self) -> bool:
        return self.principal.can(Permission.FLEET_WRITE)

    @property
    def is_admin(self) -> bool:
        return self.principal.can(Permission.ADMIN_WRITE)


async def session_viewer(request: Request, c: Container) -> Viewer | None:
    """The console session's user, even one who must still change a one-time password:
    only for the password page and for choosing where ``page`` sends a visitor."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    found = await c.accounts.principal_for_session(cookie)
    if found is None:
        return None
    principal, csrf = found
    return Viewer(principal, csrf)


async def viewer_of(request: Request, c: Container) -> Viewer | None:
    """The console session's user, or None: not logged in, the session ended, or the
    account still on its one-time password (the API refuses such an account everything
    but the password change, and so does every page and fragment built on this)."""
    viewer = await session_viewer(request, c)
    if viewer is None or viewer.principal.must_change_password:
        return None
    return viewer


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)


def render(
    request: Request, name: str, viewer: Viewer | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {"viewer": viewer, "version": __version__, "path": request.url.path, **context},
        status_code=status,
    )


async def page(
    request: Request, c: Container, name: str, permission: Permission, **context: Any
) -> Response:
    """A page for a logged-in user with ``permission``; the login page otherwise."""
    viewer = await session_viewer(request, c)
    if viewer is None:
        return to_login(request)
    if viewer.principal.must_change_password:
        return RedirectResponse("/console/password", status_code=303)
    if not viewer.principal.can(permission):
        return render(request, "forbidden.html", viewer, status=403, needed=permission.value)
    return render(request, name, viewer, **context)


# --- login ------------------------------------------------------------------------------------


@root.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str = "/console/") -> HTMLResponse:
    safe_next = next if next.startswith("/console/") else "/console/"
    return render(request, "login.html", None, next=safe_next)


@router.get("/password")
async def password_page(request: Request, c: ContainerDep) -> Response:
    viewer = await session_viewer(request, c)
    if viewer is None:
        return to_login(request)
    return render(request, "password.html", viewer)


# --- dashboard --------------------------------------------------------------------------------


@router.get("/")
async def dashboard(request: Request, c: ContainerDep) -> Response:
    return await page(request, c, "dashboard.html", Permission.FLEET_READ)


@router.get("/fragments/fleet-summary")
async def fleet_summary(request: Request, c: ContainerDep) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    breakdown = await c.fleet.breakdown()
    counts = dict(breakdown["status"])
    summary = await c.event_log.summary()
    _, running = await c.tasks.list_tasks(
        kinds=list(TaskKind), states=[s.value for s in TASK_OPEN], limit=10
    )
    alarms = await c.event_log.query(EventFilter(alarm=AlarmState.OPEN), before_id=None, limit=8)
    charts = {
        "status": breakdown["status"],
        "model": [(k or "unknown", n) for k, n in breakdown["model"]],
        "firmware": [(k or "unknown", n) for k, n in breakdown["firmware"]],
        "events": sorted(summary.by_type.items()),
    }
    return render(
        request,
        "fragments/fleet_summary.html",
        viewer,
        counts=counts,
        summary=summary,
        running=running,
        alarms=alarms,
        charts=charts,
    )


@router.get("/fragments/bell")
async def bell(request: Request, c: ContainerDep) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None:
        return Response(status_code=401)
    summary = await c.event_log.summary()
    unacked = sum(n for _, n in summary.open_alarms.values())
    return render(request, "fragments/bell.html", viewer, unacked=unacked)


# --- devices ----------------------------------------------------------------------------------


@router.get("/devices")
async def devices_page(request: Request, c: ContainerDep, q: str = "") -> Response:
    return await page(request, c, "devices.html", Permission.FLEET_READ, q=q)


@router.get("/fragments/devices")
async def devices_fragment(
    request: Request, c: ContainerDep, q: str = "", offset: int = 0
) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    error = ""
    rows: list[Any] = []
    total = 0
    try:
        result = await c.fleet.list_devices(
            DeviceFilter(query=parse(q) if q.strip() else None),
            offset=max(0, offset),
            limit=PAGE_SIZE,
        )
        rows, total = list(result.items), result.total
    except EdgefleetError as exc:
        error = exc.message
    groups: list[Any] = []
    if viewer.can_write:
        _, views_ = await c.fleet.list_groups(offset=0, limit=1000)
        groups = [g.group for g in views_]
    return render(
        request,
        "fragments/devices.html",
        viewer,
        groups=groups,
        rows=rows,
        total=total,
        q=q,
        offset=offset,
        page_size=PAGE_SIZE,
        error=error,
    )
