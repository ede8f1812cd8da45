"""The REST API's application: routers, error handlers, middleware, OpenAPI at /docs (the
console's pages join it in asgi.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from edgefleet import __version__
from edgefleet.api import errors, inputs
from edgefleet.api.bodylimit import BodyLimitMiddleware, upload_paths
from edgefleet.api.middleware import AuditMiddleware, MetricsMiddleware
from edgefleet.api.multipart import upload_limit
from edgefleet.api.routes import (
    audit,
    auth,
    broker,
    devices,
    events,
    filebin,
    firmware,
    groups,
    grouptasks,
    health,
    notifications,
    pki,
    rollouts,
    tasks,
    tokens,
    users,
)
from edgefleet.bootstrap import Container
from edgefleet.errors import EdgefleetError, NotFoundError


def create_app(
    container: Container,
    *,
    run_messaging: bool = False,
    pages: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """Build the app around an already-built container (the caller owns its lifetime);
    ``pages`` adds the routes served beside the API (the console: ``web.console.mount``),
    after the API's own and behind the same middleware.

    With ``run_messaging`` the app's lifespan starts and stops the gateway side (embedded
    broker, broker link, presence): uvicorn re-raises SIGTERM after its own shutdown, so
    anything that must stop cleanly has to stop inside the lifespan.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_messaging:
            await container.start_messaging()
        try:
            yield
        finally:
            if run_messaging:
                await container.stop_messaging()

    app = FastAPI(
        lifespan=lifespan,
        title="edgefleet",
        version=__version__,
        description=(
            "Fleet manager for industrial IoT gateways. `/api/v1/devices`, `/groups` and "
            "`/auth/local` are drop-in compatible with ThingsPro Server v2.5; authenticate with "
            "the `mx-api-token` header or `Authorization: Bearer`."
        ),
        docs_url="/docs",
        openapi_url="/openapi.json",
        # every route, the console's included: text, numbers and JSON checked once
        dependencies=[Depends(inputs.check_request)],
    )
    app.state.container = container
    api_routes: list[BaseRoute] = []  # as declared: the app's own list holds included routers
    # routes are matched in order: the broker hooks, the most frequent requests of all (one
    # per gateway connection and subscription), come first
    for module in (
        broker,
        health,
        auth,
        devices,
        groups,
        users,
        tokens,
        audit,
        pki,
        tasks,
        filebin,
        firmware,
        grouptasks,
        rollouts,
        events,
        notifications,
    ):
        for name in ("compat", "router", "extra"):
            r = getattr(module, name, None)
            if r is not None:
                app.include_router(r)
                api_routes.extend(r.routes)
    app.add_exception_handler(EdgefleetError, errors.handle_error)
    app.add_exception_handler(RequestValidationError, errors.handle_error)
    app.add_exception_handler(StarletteHTTPException, errors.handle_error)
    app.add_exception_handler(Exception, errors.handle_unexpected)
    app.mount("/metrics", _spelt_out(b"/metrics", make_asgi_app()))
    if pages is not None:
        pages(app)
    # the last added runs first: unexpected errors, proxy headers, metrics, body limit,
    # audit, then the app
    app.add_middleware(AuditMiddleware, audit=container.audit)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=container.settings.http.max_body_bytes,
        body_timeout=container.settings.http.body_timeout_seconds,
        max_upload_bytes=upload_limit(container.settings.storage.max_file_bytes),
        upload_paths=upload_paths(api_routes),
        routes=api_routes,
    )
    app.add_middleware(MetricsMiddleware)
    trusted = container.settings.http.trusted_proxies
    if trusted:
        # The one place that decides the client's address (and scheme): the peer's, unless
        # the peer is a listed proxy. `serve` turns uvicorn's own copy of this off.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(trusted))
    app.add_middleware(errors.UnexpectedErrors)  # outermost: sees what every layer raised
    return app


def _spelt_out(prefix: bytes, inner: ASGIApp) -> ASGIApp:
    """``inner`` only for a path sent as ``prefix`` literally: ``/%6Detrics`` (``/metrics``
    once decoded) would slip past a proxy that keeps it from the public by its path (the AWS
    ALB's rule); it is a 404 here."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw is not None and not raw.startswith(prefix):
            response = errors.error_response(Request(scope), NotFoundError("not found"))
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    return guarded
