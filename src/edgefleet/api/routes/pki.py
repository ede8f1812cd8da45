"""Certificates, the modern option next to TLS-PSK.

- ``POST /api/v1/devices/{uuid}/certificate {"csr": PEM}``: the server (its own CA) signs a
  client certificate for the gateway, CN = its uuid, with the key of the CSR. Sent with the
  same read/write token that registers devices; the private key never leaves the gateway.
- ``GET /api/v1/devices/{uuid}/certificates``, ``DELETE …/certificates`` (revoke all).
- ``GET /api/v1/pki/ca.pem`` and ``/pki/crl.pem``: public, for brokers and gateways.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.responses import reply
from edgefleet.api.responses.certificates import CertificatePublic, IssuedCertificate, Revoked
from edgefleet.pki import MAX_CSR_BYTES
from edgefleet.presenters.certificates import certificate_public, issued_public

router = APIRouter(prefix="/api/v1", tags=["certificates"])
PEM = "application/x-pem-file"


class PemResponse(PlainTextResponse):
    """A PEM document (the type ``/openapi.json`` shows for the PEM routes)."""

    media_type = PEM


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr: str = Field(min_length=1, max_length=MAX_CSR_BYTES)


@router.post(
    "/devices/{uuid}/certificate",
    name="devices.certificate.issue",
    response_model=IssuedCertificate,
    status_code=201,
)
async def issue(
    request: Request, c: ContainerDep, _: FleetWriter, uuid: str, body: CertificateRequest
) -> Response:
    audit_target(request, "device", uuid)
    issued = await c.pki.issue_device(uuid, body.csr)
    ca = await c.pki.authority()
    return reply(issued_public(issued, ca.cert_pem), 201)


@router.get(
    "/devices/{uuid}/certificates",
    name="devices.certificate.list",
    response_model=list[CertificatePublic],
)
async def list_certificates(c: ContainerDep, _: FleetReader, uuid: str) -> Response:
    await c.fleet.get_device(uuid)
    return reply([certificate_public(x) for x in await c.pki.device_certificates(uuid)])


@router.delete(
    "/devices/{uuid}/certificates", name="devices.certificate.revoke", response_model=Revoked
)
async def revoke(request: Request, c: ContainerDep, _: FleetWriter, uuid: str) -> Response:
    audit_target(request, "device", uuid)
    await c.fleet.get_device(uuid)
    return reply({"revoked": await c.pki.revoke_devices([uuid])})


@router.get(
    "/pki/ca.pem",
    name="pki.ca",
    response_class=PemResponse,
    response_description="the CA's certificate",
)
async def ca_pem(c: ContainerDep) -> PemResponse:
    return PemResponse((await c.pki.authority()).cert_pem)


@router.get(
    "/pki/crl.pem",
    name="pki.crl",
    response_class=PemResponse,
    response_description="the certificate revocation list",
)
async def crl_pem(c: ContainerDep) -> PemResponse:
    return PemResponse(await c.pki.crl_pem(), headers={"Cache-Control": "no-store"})
