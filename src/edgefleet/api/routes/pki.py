"""Certificates, the modern option next to TLS-PSK.

- ``POST /api/v1/devices/{uuid}/certificate {"csr": PEM}``: the server (its own CA) signs a
  client certificate for the gateway, CN = its uuid, with the key of the CSR. Sent with the
  same read/write token that registers devices; the private key never leaves the gateway.
- ``GET /api/v1/devices/{uuid}/certificates``, ``DELETE …/certificates`` (revoke all).
- ``GET /api/v1/pki/ca.pem`` and ``/pki/crl.pem``: public, for brokers and gateways.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.db.tables import DeviceCertificate
from edgefleet.pki import MAX_CSR_BYTES

router = APIRouter(prefix="/api/v1", tags=["certificates"])
PEM = "application/x-pem-file"


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr: str = Field(min_length=1, max_length=MAX_CSR_BYTES)


def _public(cert: DeviceCertificate) -> dict[str, Any]:
    return {
        "serialNumber": cert.serial,
        "deviceUUID": cert.device_uuid,
        "issuedAt": cert.issued_at,
        "notAfter": cert.not_after,
        "revokedAt": cert.revoked_at,
    }


@router.post("/devices/{uuid}/certificate", name="devices.certificate.issue", status_code=201)
async def issue(
    request: Request, c: ContainerDep, _: FleetWriter, uuid: str, body: CertificateRequest
) -> dict[str, Any]:
    audit_target(request, "device", uuid)
    issued = await c.pki.issue_device(uuid, body.csr)
    ca = await c.pki.authority()
    return {
        "certificate": issued.pem,
        "ca": ca.cert_pem,
        "serialNumber": issued.serial,
        "notAfter": issued.not_after,
    }


@router.get("/devices/{uuid}/certificates", name="devices.certificate.list")
async def list_certificates(c: ContainerDep, _: FleetReader, uuid: str) -> list[dict[str, Any]]:
    await c.fleet.get_device(uuid)
    return [_public(x) for x in await c.pki.device_certificates(uuid)]


@router.delete("/devices/{uuid}/certificates", name="devices.certificate.revoke")
async def revoke(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> dict[str, int]:
    audit_target(request, "device", uuid)
    await c.fleet.get_device(uuid)
    return {"revoked": await c.pki.revoke_devices([uuid])}


@router.get("/pki/ca.pem", name="pki.ca", response_class=PlainTextResponse)
async def ca_pem(c: ContainerDep) -> PlainTextResponse:
    return PlainTextResponse((await c.pki.authority()).cert_pem, media_type=PEM)


@router.get("/pki/crl.pem", name="pki.crl", response_class=PlainTextResponse)
async def crl_pem(c: ContainerDep) -> PlainTextResponse:
    return PlainTextResponse(
        await c.pki.crl_pem(), media_type=PEM, headers={"Cache-Control": "no-store"}
    )
