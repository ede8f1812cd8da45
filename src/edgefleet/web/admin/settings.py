"""The console's settings page (``/console/settings``, for admins): what the server runs with,
read-only (where gateways register and connect, the database, the file store, the MQTT
client id, where the secret key comes from); no password or secret key is shown, and the
file store's endpoint loses its ``user:password@`` part."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from edgefleet.api.deps import ContainerDep
from edgefleet.domain.auth import Permission
from edgefleet.services.about import database_facts
from edgefleet.settings import Settings
from edgefleet.web.i18n import N_
from edgefleet.web.views import page

router = APIRouter(prefix="/console", include_in_schema=False)


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
