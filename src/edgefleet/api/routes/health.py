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
    db_ok = await c.db.ping()
    body = {"status": "ready" if db_ok else "not ready", "checks": {"database": db_ok}}
    return JSONResponse(body, status_code=200 if db_ok else 503)
