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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from edgefleet import __version__
from edgefleet.api.deps import SESSION_COOKIE, ContainerDep
from edgefleet.api.inputs import Int32
from edgefleet.bootstrap import Container
from edgefleet.domain.auth import LOCALES, Permission, Principal
from edgefleet.domain.devicefilter import DeviceFilter, DeviceOrder
from edgefleet.domain.devices import SORT_KEYS
from edgefleet.domain.eventfilter import EventFilter
from edgefleet.domain.events import AlarmState
from edgefleet.domain.query import parse
from edgefleet.domain.tasks import TASK_OPEN, TaskKind
from edgefleet.errors import EdgefleetError
from edgefleet.jsontree import without_surrogates
from edgefleet.web import i18n
from edgefleet.web.i18n import gettext

HERE = Path(__file__).parent


def _printable(value: Any) -> Any:
    """Every ``{{ }}`` value as it is, but text with a lone surrogate (a stored JSON value of
    before the input rules, a gateway's property): U+FFFD in its place, so the page can be
    encoded (else a 500 for the whole page)."""
    if isinstance(value, str) and (cleaned := without_surrogates(value)) != value:
        return type(value)(cleaned)  # Markup stays Markup: not escaped twice
    return value


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    extensions=["jinja2.ext.i18n"],
    finalize=_printable,
)
_env.install_gettext_callables(  # type: ignore[attr-defined]  # added by the i18n extension
    i18n.gettext, i18n.ngettext, newstyle=True
)
templates = Jinja2Templates(env=_env)
static = StaticFiles(directory=HERE / "static")
router = APIRouter(prefix="/console", include_in_schema=False)
root = APIRouter(include_in_schema=False)
fallback = APIRouter(prefix="/console", include_in_schema=False)
"""Included after every console router: an unknown console URL gets an HTML 404 page."""


def when(at: datetime | None) -> str:
    """A stored time as shown: UTC to the second (SQLite hands times back without a zone)."""
    if at is None:
        return ""
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S")


def iso(at: datetime | None) -> str:
    """A stored time for ``<time datetime=…>``."""
    if at is None:
        return ""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat().replace("+00:00", "Z")


def term(value: Any) -> str:
    """A stored word (a state, a role, a severity: web/terms.py) in the page's language."""
    return gettext(str(value).lower())


templates.env.globals.update(when=when, iso=iso)
templates.env.filters["term"] = term

PAGE_SIZE = 50
DEVICE_PAGE_SIZES = (25, 50, 100, 200)


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page, and what the page may offer them."""

    principal: Principal
    csrf: str
    live_after: int | None = None
    """On a page: the newest event id when it was rendered, where its live stream starts (the
    events stored while the stream connects are replayed, not lost); None on a fragment."""

    @property
    def can_write(self) -> bool:
        return self.principal.can(Permission.FLEET_WRITE)

    @property
    def is_admin(self) -> bool:
        return self.principal.can(Permission.ADMIN_WRITE)


def use_language(request: Request, principal: Principal | None) -> str:
    """Set the language of the rest of this request (see i18n.py) and return it."""
    locale = i18n.negotiate(
        principal.locale if principal else "",
        request.cookies.get(i18n.COOKIE, ""),
        request.headers.get("accept-language", ""),
    )
    i18n.activate(locale)
    return locale


async def session_viewer(
    request: Request, c: Container, *, for_page: bool = False
) -> Viewer | None:
    """The console session's user, even one who must still change a one-time password:
    only for the password page and for choosing where ``page`` sends a visitor. Also sets
    the request's language (the user's, else the browser's).

    ``for_page``: the request renders a whole page (not a fragment), whose live stream starts
    after ``live_after``; read first, before the page's rows and its fragments, so an event
    stored after they were read is always replayed to the page."""
    cookie = request.cookies.get(SESSION_COOKIE)
    found = await c.accounts.principal_for_session(cookie) if cookie else None
    if found is None:
        use_language(request, None)
        return None
    principal, csrf = found
    use_language(request, principal)
    live = for_page and not principal.must_change_password and principal.can(Permission.FLEET_READ)
    return Viewer(principal, csrf, await c.event_log.newest_id() if live else None)


async def viewer_of(request: Request, c: Container, *, for_page: bool = False) -> Viewer | None:
    """The console session's user, or None: not logged in, the session ended, or the
    account still on its one-time password (the API refuses such an account everything
    but the password change, and so does every page and fragment built on this)."""
    viewer = await session_viewer(request, c, for_page=for_page)
    if viewer is None or viewer.principal.must_change_password:
        return None
    return viewer


async def fragment_viewer(
    request: Request, c: Container, permission: Permission, *, for_page: bool = False
) -> Viewer | None:
    """The viewer of a fragment (or, ``for_page``, of a whole page: see ``session_viewer``),
    when logged in, done with the one-time password, and allowed."""
    viewer = await viewer_of(request, c, for_page=for_page)
    if viewer is None or viewer.principal.must_change_password:
        return None
    return viewer if viewer.principal.can(permission) else None


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)


def render(
    request: Request, name: str, viewer: Viewer | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    locale = i18n.current()
    return templates.TemplateResponse(
        request,
        name,
        {
            "viewer": viewer,
            "version": __version__,
            "path": request.url.path,
            "locale": locale,
            "html_lang": i18n.HTML_LANG[locale],
            "languages": [(code, i18n.NAMES[code]) for code in LOCALES],
            "js_i18n": i18n.js_catalog(locale),
            **context,
        },
        status_code=status,
    )


async def page(
    request: Request, c: Container, name: str, permission: Permission, **context: Any
) -> Response:
    """A page for a logged-in user with ``permission``; the login page otherwise."""
    viewer = await session_viewer(request, c, for_page=True)
    return await page_for(request, c, viewer, name, permission, **context)


async def page_for(
    request: Request,
    c: Container,
    viewer: Viewer | None,
    name: str,
    permission: Permission,
    **context: Any,
) -> Response:
    """As :func:`page`, for a viewer already found (with :func:`session_viewer`, ``for_page``)."""
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
    use_language(request, None)
    safe_next = next if next.startswith("/console/") else "/console/"
    return render(request, "login.html", None, next=safe_next)


@router.get("/password")
async def password_page(request: Request, c: ContainerDep) -> Response:
    viewer = await session_viewer(request, c, for_page=True)
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
    unknown = gettext("unknown")
    charts = {
        "status": [(term(k), n) for k, n in breakdown["status"]],
        "model": [(k or unknown, n) for k, n in breakdown["model"]],
        "firmware": [(k or unknown, n) for k, n in breakdown["firmware"]],
        "events": sorted((term(k), n) for k, n in summary.by_type.items()),
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


@dataclass(frozen=True)
class ListState:
    """What a gateway list shows: the fleet query, the order, the page and its size."""

    q: str = ""
    sort: str = "created"
    descending: bool = False
    page: int = 1
    size: int = PAGE_SIZE

    @classmethod
    def of(cls, q: str, sort: str, page: int, size: int) -> ListState:
        descending = sort.startswith("-")
        key = sort.lstrip("-")
        return cls(
            q=q,
            sort=key if key in SORT_KEYS else "created",
            descending=descending and key in SORT_KEYS,
            page=max(1, page),
            size=size if size in DEVICE_PAGE_SIZES else PAGE_SIZE,
        )

    def doc(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "sort": ("-" if self.descending else "") + self.sort,
            "page": self.page,
            "size": self.size,
        }


def device_columns() -> list[tuple[str, str]]:
    return [
        ("name", gettext("Name")),
        ("status", gettext("State")),
        ("since", gettext("Since")),
        ("mac", gettext("MAC")),
        ("model", gettext("Model")),
        ("firmware", gettext("Firmware")),
        ("group", gettext("Group")),
    ]


@router.get("/devices")
async def devices_page(
    request: Request,
    c: ContainerDep,
    q: str = "",
    sort: str = "created",
    page: int = 1,
    size: int = PAGE_SIZE,
) -> Response:
    # page_for sends a one-time password away
    viewer = await session_viewer(request, c, for_page=True)
    groups: list[Any] = []
    if viewer is not None and viewer.can_write and not viewer.principal.must_change_password:
        _, views_ = await c.fleet.list_groups(offset=0, limit=1000)
        groups = [g.group for g in views_]
    return await page_for(
        request,
        c,
        viewer,
        "devices.html",
        Permission.FLEET_READ,
        state=ListState.of(q, sort, page, size).doc(),
        groups=groups,
    )


@router.get("/fragments/devices")
async def devices_fragment(
    request: Request,
    c: ContainerDep,
    q: str = "",
    sort: str = "created",
    page: Int32 = 1,
    size: Int32 = PAGE_SIZE,
) -> Response:
    viewer = await viewer_of(request, c)
    if viewer is None or not viewer.principal.can(Permission.FLEET_READ):
        return Response(status_code=401)
    state = ListState.of(q, sort, page, size)
    error = ""
    rows: list[Any] = []
    total = 0
    try:
        result = await c.fleet.list_devices(
            DeviceFilter(query=parse(q) if q.strip() else None),
            offset=(state.page - 1) * state.size,
            limit=state.size,
            order=DeviceOrder(state.sort, state.descending),
        )
        rows, total = list(result.items), result.total
    except EdgefleetError as exc:
        error = exc.message
    names = await c.fleet.group_names({v.device.group_id for v in rows if v.device.group_id})
    pages = max(1, -(-total // state.size))
    first = (state.page - 1) * state.size + 1
    columns = device_columns()
    return render(
        request,
        "fragments/devices.html",
        viewer,
        rows=rows,
        total=total,
        q=q,
        page=state.page,
        pages=pages,
        size=state.size,
        first=first,
        last=first + len(rows) - 1,
        sort=state.sort,
        sort_label=dict(columns).get(state.sort, gettext("registration")),
        descending=state.descending,
        columns=columns,
        page_sizes=DEVICE_PAGE_SIZES,
        group_names=names,
        error=error,
    )


# --- everything else under /console ------------------------------------------------------------


@fallback.get("/{rest:path}")
async def not_found(request: Request, c: ContainerDep, rest: str) -> Response:
    """An unknown console URL: a page saying so (with the menu when logged in), not JSON."""
    # none for an account on its one-time password
    viewer = await viewer_of(request, c, for_page=True)
    return render(request, "not_found.html", viewer, status=404, url=request.url.path)
