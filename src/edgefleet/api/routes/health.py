"""Liveness, readiness and Prometheus metrics (no authentication: keep them off the internet
or behind the proxy's access rules)."""

from __future__ import annotations

from typing import Any

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
    """Ready when the database answers, if this process runs the gateway side its broker
    connection is up (requests to gateways would fail without it), and no background
    worker is failing (failed 3 times in a row, no run lasting 60 s between: see
    edgefleet/workers.py). ``workers`` reports each one: state, failures, last error."""
    checks = {"database": await c.db.ping()}
    if c.messaging.running:
        checks["broker"] = c.messaging.link.connected.is_set()
    workers = c.workers.report() if len(c.workers) else None
    if workers is not None:
        checks["workers"] = c.workers.ready
    ok = all(checks.values())
    body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
    if workers is not None:
        body["workers"] = workers
    return JSONResponse(body, status_code=200 if ok else 503)
