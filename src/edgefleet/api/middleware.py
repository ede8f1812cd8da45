"""ASGI middleware: the audit trail of every write, and HTTP metrics.

Both are plain ASGI (no BaseHTTPMiddleware) so reads pay almost nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.domain.auth import Principal
from edgefleet.services.audit import Actor, AuditService

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

REQUESTS = Counter("edgefleet_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "edgefleet_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _route(scope: Scope) -> Any:
    return scope.get("route")


class _StatusRecorder:
    """Wraps ``send`` to remember the response status (500 if none was sent)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorder = _StatusRecorder(send)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, recorder)
        finally:
            route = _route(scope)
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            LATENCY.labels(method, template).observe(time.perf_counter() - start)
            REQUESTS.labels(method, template, str(recorder.status)).inc()


AUDITED_PREFIXES = ("/api/", "/filebin/")
"""The API, and the original's filebin mount outside it."""

NOT_AUDITED = frozenset({"/api/v1/broker/authn", "/api/v1/broker/authz"})
"""Questions asked with POST, not changes: one per broker connection or subscription."""


class AuditMiddleware:
    """Records every write under ``/api/`` (and ``/filebin/``) with its actor, action,
    target and outcome."""

    def __init__(self, app: ASGIApp, audit: AuditService) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not scope["path"].startswith(AUDITED_PREFIXES)
            or scope["path"] in NOT_AUDITED
        ):
            await self.app(scope, receive, send)
            return
        recorder = _StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            await self._record(scope, recorder.status)

    async def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        client = scope.get("client")
        if principal is not None:
            actor = Actor(
                principal.kind.value if principal.kind.value != "session" else "user",
                principal.actor_id,
                principal.email,
            )
        else:
            actor = Actor("anonymous", "", str(state.get("audit_actor", ""))[:254])
        route = _route(scope)
        action = (
            state.get("audit_action")
            or getattr(route, "name", None)
            or f"{scope['method']} {scope['path']}"
        )
        target_type, target_id = state.get("audit_target", ("", ""))
        if not target_id:
            params = scope.get("path_params") or {}
            target_id = str(next(iter(params.values()), ""))
            target_type = action.split(".", 1)[0]
        if status < 400:
            outcome = "success"
        elif status in (401, 403, 429):
            outcome = "denied"
        else:
            outcome = "failure"
        try:
            await self.audit.record(
                actor,
                action,
                outcome=outcome,
                target_type=target_type,
                target_id=target_id,
                status_code=status,
                ip=client[0] if client else "",
                detail={"method": scope["method"], "path": scope["path"]},
            )
        except Exception:  # the response is already sent; never turn it into a 500
            log.exception("could not write the audit entry for %s", action)
