"""Console pages of the event log and alarms, API tokens, users, the audit log and settings.

As every console page (see views.py for the design): rendered here from the services the API
uses, for the viewer's cookie session; every change goes from the browser to the JSON API
(``/api/v1/events/...``, ``/tokens``, ``/users``), so these pages cannot grant what the API
refuses. Write controls are drawn only for those who may use them.
"""

from __future__ import annotations

import socket
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.bootstrap import Container
from edgefleet.db.tables import ApiToken, AuditEntry, Event
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.auth import TOKEN_DESCRIPTION_MAX, Permission, Role
from edgefleet.domain.eventfilter import MAX_VALUES, parse_filter
from edgefleet.domain.events import AlarmState, EventType, Severity
from edgefleet.domain.limits import INT64_MAX
from edgefleet.errors import EdgefleetError, ValidationError
from edgefleet.presenters.events import decode_cursor, encode_cursor
from edgefleet.services.about import database_facts
from edgefleet.settings import Settings
from edgefleet.web.i18n import N_, gettext
from edgefleet.web.views import PAGE_SIZE, Viewer, iso, page, render, viewer_of, when

router = APIRouter(prefix="/console", include_in_schema=False)

EVENT_PARAMS = ("device", "group", "type", "resource", "severity", "alarm", "since", "until", "q")
"""The query parameters of ``GET /api/v1/events`` the events page honours."""
AUDIT_PARAMS = ("actor", "action", "outcome", "target")
AUDIT_OUTCOMES = ("success", "failure", "denied")
TOKEN_EXPIRY_DAYS = (30, 90, 365)


async def fragment_viewer(request: Request, c: Container, permission: Permission) -> Viewer | None:
    """The viewer of a fragment, when logged in, done with the one-time password, and allowed."""
    viewer = await viewer_of(request, c)
    if viewer is None or viewer.principal.must_change_password:
        return None
    return viewer if viewer.principal.can(permission) else None


def first_values(request: Request, names: Iterable[str]) -> dict[str, str]:
    return {name: request.query_params.get(name, "") for name in names}


def link(path: str, pairs: Sequence[tuple[str, str]]) -> str:
    kept = [(k, v) for k, v in pairs if v != ""]
    return f"{path}?{urlencode(kept)}" if kept else path


# --- events and alarms ------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    id: int
    at: str
    at_iso: str
    type: str
    device_uuid: str | None
    device_name: str | None
    """The gateway's name; None when the gateway is gone (its events stay)."""
    resource: str
    text: str
    severity: str | None
    state: str
    """``unacknowledged``, ``acknowledged`` or ``cleared`` for an alarm; empty otherwise."""
    acked_by: str
    acked_at: str
    cleared_by: str
    cleared_at: str

    @property
    def is_open(self) -> bool:
        return self.state in (AlarmState.UNACKNOWLEDGED, AlarmState.ACKNOWLEDGED)


def event_row(e: Event, names: dict[str, str]) -> EventRow:
    state = ""
    if e.severity is not None:
        if e.cleared_at is not None:
            state = AlarmState.CLEARED.value
        elif e.acked_at is not None:
            state = AlarmState.ACKNOWLEDGED.value
        else:
            state = AlarmState.UNACKNOWLEDGED.value
    return EventRow(
        id=e.id,
        at=when(e.at),
        at_iso=iso(e.at),
        type=e.type,
        device_uuid=e.device_uuid,
        device_name=names.get(e.device_uuid) if e.device_uuid else None,
        resource=e.resource,
        text=e.text,
        severity=e.severity,
        state=state,
        acked_by=e.acked_by or "",
        acked_at=when(e.acked_at),
        cleared_by=e.cleared_by or "",
        cleared_at=when(e.cleared_at),
    )


async def device_names(c: Container, uuids: set[str]) -> dict[str, str]:
    """Names of the gateways among ``uuids`` that still exist."""
    found = await c.fleet.display_names(sorted(uuids))
    return {uuid: name or uuid for uuid, name in found.items()}


async def gateways_named(c: Container, values: list[str]) -> list[str]:
    """The ``device`` values of the events filter as uuids: each is a uuid or (part of) a
    gateway's name."""
    out: list[str] = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        try:
            out.append(str(uuidlib.UUID(value)))
            continue
        except ValueError:
            pass
        found = await c.fleet.uuids_named(value, MAX_VALUES)
        if not found:
            raise ValidationError(gettext("No gateway is named %(name)s.") % {"name": value})
        if len(found) > MAX_VALUES:
            raise ValidationError(
                gettext("More than %(n)s gateways have %(name)s in their name: be more precise.")
                % {"n": MAX_VALUES, "name": value}
            )
        out.extend(found)
    return out


@router.get("/events")
async def events_page(request: Request, c: ContainerDep) -> Response:
    return await page(
        request,
        c,
        "events/index.html",
        Permission.FLEET_READ,
        f=first_values(request, EVENT_PARAMS),
        query=request.url.query,
        types=[t.value for t in EventType],
        severities=[s.value for s in Severity],
        alarm_states=[a.value for a in AlarmState],
    )


@router.get("/fragments/events")
async def events_fragment(request: Request, c: ContainerDep, cursor: str = "") -> Response:
    viewer = await fragment_viewer(request, c, Permission.FLEET_READ)
    if viewer is None:
        return Response(status_code=401)
    qp = request.query_params
    error = ""
    rows: list[EventRow] = []
    older = ""
    try:
        f = parse_filter(
            devices=await gateways_named(c, qp.getlist("device")),
            group=qp.get("group"),
            types=qp.getlist("type"),
            resource=qp.get("resource"),
            severity=qp.get("severity"),
            alarm=qp.get("alarm"),
            since=qp.get("since"),
            until=qp.get("until"),
            q=qp.get("q"),
        )
        found = await c.event_log.query(
            f, before_id=decode_cursor(cursor) if cursor else None, limit=PAGE_SIZE + 1
        )
        names = await device_names(c, {e.device_uuid for e in found if e.device_uuid})
        rows = [event_row(e, names) for e in found[:PAGE_SIZE]]
        if len(found) > PAGE_SIZE and rows:
            pairs = [(k, v) for k, v in qp.multi_items() if k in EVENT_PARAMS]
            older = link("/console/events", [*pairs, ("cursor", encode_cursor(rows[-1].id))])
    except EdgefleetError as exc:
        error = exc.message
    newest = ""
    if cursor:
        newest = link("/console/events", [(k, v) for k, v in qp.multi_items() if k != "cursor"])
    filtered = any(qp.get(name) for name in EVENT_PARAMS)
    return render(
        request,
        "events/rows.html",
        viewer,
        rows=rows,
        error=error,
        older=older,
        newest=newest,
        filtered=filtered,
        selectable=viewer.can_write and any(r.is_open for r in rows),
    )


# --- API tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRow:
    id: int
    prefix: str
    description: str
    scope: str
    owner: str
    created: str
    expires: str
    last_used: str
    revoked: str
    status: str
    """``active``, ``expired`` or ``revoked``."""


def token_row(t: ApiToken, owners: dict[int, str], now: datetime) -> TokenRow:
    expires_at = t.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if t.revoked_at is not None:
        status = "revoked"
    elif expires_at is not None and expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return TokenRow(
        id=t.id,
        prefix=t.prefix,
        description=t.description,
        scope=t.scope,
        owner=owners.get(t.user_id, str(t.user_id)),
        created=when(t.created_at),
        expires=when(t.expires_at),
        last_used=when(t.last_used_at),
        revoked=when(t.revoked_at),
        status=status,
    )


@router.get("/tokens")
async def tokens_page(request: Request, c: ContainerDep, all: bool = False) -> Response:
    return await page(
        request,
        c,
        "tokens/index.html",
        Permission.FLEET_READ,
        all=all,
        description_max=TOKEN_DESCRIPTION_MAX,
        expiry_days=TOKEN_EXPIRY_DAYS,
    )


@router.get("/fragments/tokens")
async def tokens_fragment(request: Request, c: ContainerDep, all: bool = False) -> Response:
    viewer = await fragment_viewer(request, c, Permission.FLEET_READ)
    if viewer is None:
        return Response(status_code=401)
    everyone = all and viewer.principal.role is Role.ADMIN
    tokens = await c.accounts.list_tokens(viewer.principal, all_users=everyone)
    owners = {viewer.principal.user_id: viewer.principal.email}
    if everyone:
        owners.update({u.id: u.email for u in await c.accounts.list_users()})
    now = datetime.now(UTC)
    return render(
        request,
        "tokens/rows.html",
        viewer,
        rows=[token_row(t, owners, now) for t in tokens],
        everyone=everyone,
    )


# --- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    role: str
    disabled: bool
    must_change_password: bool
    created: str
    last_login: str
    is_me: bool


@router.get("/users")
async def users_page(request: Request, c: ContainerDep) -> Response:
    return await page(
        request, c, "users/index.html", Permission.ADMIN_READ, roles=[r.value for r in Role]
    )


@router.get("/fragments/users")
async def users_fragment(request: Request, c: ContainerDep) -> Response:
    viewer = await fragment_viewer(request, c, Permission.ADMIN_READ)
    if viewer is None:
        return Response(status_code=401)
    rows = [
        UserRow(
            id=u.id,
            email=u.email,
            role=u.role,
            disabled=u.disabled,
            must_change_password=u.must_change_password,
            created=when(u.created_at),
            last_login=when(u.last_login_at),
            is_me=u.id == viewer.principal.user_id,
        )
        for u in await c.accounts.list_users()
    ]
    return render(request, "users/rows.html", viewer, rows=rows, roles=[r.value for r in Role])


# --- audit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: str
    at_iso: str
    actor_type: str
    actor_name: str
    action: str
    target: str
    outcome: str
    status_code: int
    ip: str


def audit_row(e: AuditEntry) -> AuditRow:
    target = f"{e.target_type} {e.target_id}".strip() if e.target_id else e.target_type
    return AuditRow(
        id=e.id,
        at=when(e.at),
        at_iso=iso(e.at),
        actor_type=e.actor_type,
        actor_name=e.actor_name or e.actor_id,
        action=e.action,
        target=target,
        outcome=e.outcome,
        status_code=e.status_code,
        ip=e.ip,
    )


@router.get("/audit")
async def audit_page(request: Request, c: ContainerDep) -> Response:
    return await page(
        request,
        c,
        "audit/index.html",
        Permission.ADMIN_READ,
        f=first_values(request, AUDIT_PARAMS),
        query=request.url.query,
        outcomes=AUDIT_OUTCOMES,
    )


@router.get("/fragments/audit")
async def audit_fragment(request: Request, c: ContainerDep, cursor: str = "") -> Response:
    viewer = await fragment_viewer(request, c, Permission.ADMIN_READ)
    if viewer is None:
        return Response(status_code=401)
    f = first_values(request, AUDIT_PARAMS)
    error = ""
    rows: list[AuditRow] = []
    older = ""
    before: int | None = None
    if cursor:
        try:
            before = int(cursor)
            if not 0 <= before <= INT64_MAX:
                raise ValueError(cursor)
        except ValueError:
            error = gettext("cursor is not one this page gave (follow the Older link)")
    if f["outcome"] and f["outcome"] not in AUDIT_OUTCOMES:
        error = gettext("outcome must be one of %(outcomes)s") % {
            "outcomes": ", ".join(AUDIT_OUTCOMES)
        }
    if not error:
        entries = await c.audit.query(
            AuditFilter(
                actor=f["actor"].strip() or None,
                action=f["action"].strip() or None,
                target_id=f["target"].strip() or None,
                outcome=f["outcome"] or None,
                before_id=before,
            ),
            PAGE_SIZE + 1,
        )
        rows = [audit_row(e) for e in entries[:PAGE_SIZE]]
        if len(entries) > PAGE_SIZE and rows:
            older = link("/console/audit", [*f.items(), ("cursor", str(rows[-1].id))])
    newest = link("/console/audit", list(f.items())) if cursor else ""
    return render(
        request,
        "audit/rows.html",
        viewer,
        rows=rows,
        error=error,
        older=older,
        newest=newest,
        filtered=any(f.values()),
    )


# --- settings ---------------------------------------------------------------------------------


def strip_userinfo(url: str) -> str:
    """A URL without its ``user:password@`` part (and without a query, which may carry keys)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0]
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def gateway_facts(s: Settings) -> dict[str, Any]:
    public = s.public_url.rstrip("/")
    host = s.mqtt.gateway_host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        host = urlsplit(public).hostname or host
    return {
        "register_url": f"{public}/api/v1/devices",
        "broker_host": host,
        "broker_port": s.mqtt.gateway_port,
        "listen_host": s.mqtt.gateway_host,
        "psk_hint": s.mqtt.psk_hint,
        "cert_port": s.mqtt.cert_port,
    }


def storage_facts(s: Settings) -> dict[str, str]:
    url = s.storage.url
    if url.startswith("s3://"):
        parts = urlsplit(url)
        return {
            "kind": "S3",
            "bucket": parts.netloc,
            "prefix": parts.path.strip("/"),
            "endpoint": strip_userinfo(s.storage.s3_endpoint_url) or "AWS",
            "region": s.storage.s3_region or "(boto3's default)",
        }
    return {"kind": N_("local directory"), "directory": str(s.files_dir)}


@router.get("/settings")
async def settings_page(request: Request, c: ContainerDep) -> Response:
    s = c.settings
    return await page(
        request,
        c,
        "settings/index.html",
        Permission.ADMIN_READ,
        s=s,
        gateway=gateway_facts(s),
        database=database_facts(s.resolved_database_url),
        storage=storage_facts(s),
        client_id=s.mqtt.client_id or f"edgefleet-{socket.gethostname()}",
        secret_key_source=(
            N_("EDGEFLEET_SECRET_KEY (configured)")
            if s.secret_key.get_secret_value()
            else N_("a key file in the data directory")
        ),
    )
