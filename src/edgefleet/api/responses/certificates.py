"""Gateways' client certificates."""

from __future__ import annotations

from pydantic import Field

from edgefleet.api.responses import Answer


class CertificatePublic(Answer):
    serialNumber: str
    deviceUUID: str
    issuedAt: str
    notAfter: str
    revokedAt: str | None


class IssuedCertificate(Answer):
    certificate: str = Field(description="PEM, signed by the server's CA")
    ca: str = Field(description="the CA's certificate, PEM")
    serialNumber: str
    notAfter: str


class Revoked(Answer):
    revoked: int = Field(description="how many certificates were revoked")
