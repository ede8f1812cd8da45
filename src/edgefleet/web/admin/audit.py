"""The console's audit log (``/console/audit``, for admins): every write through the API,
newest first, filtered by actor, action, outcome and target, paged by cursor."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.db.tables import AuditEntry
from edgefleet.domain.audit import AuditFilter
from edgefleet.domain.auth import Permission
from edgefleet.domain.limits import INT64_MAX
from edgefleet.web.admin.filters import first_values, link
from edgefleet.web.i18n import gettext
from edgefleet.web.views import PAGE_SIZE, fragment_viewer, iso, page, render, when

router = APIRouter(prefix="/console", include_in_schema=False)

AUDIT_PARAMS = ("actor", "action", "outcome", "target")
AUDIT_OUTCOMES = ("success", "failure", "denied")


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
