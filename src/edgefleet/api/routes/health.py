"""Liveness, readiness and Prometheus metrics (no authentication: keep them off the internet
or behind the proxy's access rules)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from edgefleet import __version__
from edgefleet.api.deps import ContainerDep

router = APIRouter(tags=["health"])


@router.get("/healthz", name="health.live")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz", name="health.ready")
async def readyz(c: ContainerDep) -> JSONResponse:
    """Ready when the database answers and, if this process runs the gateway side, its
    broker connection is up (requests to gateways would fail without it)."""
    checks = {"database": await c.db.ping()}
    if c.messaging.tasks:
        checks["broker"] = c.messaging.link.connected.is_set()
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)
