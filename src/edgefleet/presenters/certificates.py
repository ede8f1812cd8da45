"""A gateway's client certificate (its record, never a key)."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import DeviceCertificate
from edgefleet.pki import Issued


def certificate_public(cert: DeviceCertificate) -> dict[str, Any]:
    return {
        "serialNumber": cert.serial,
        "deviceUUID": cert.device_uuid,
        "issuedAt": cert.issued_at.isoformat(),
        "notAfter": cert.not_after.isoformat(),
        "revokedAt": cert.revoked_at.isoformat() if cert.revoked_at else None,
    }


def issued_public(issued: Issued, ca_pem: str) -> dict[str, Any]:
    """The answer to a CSR: the certificate and the CA's, PEM."""
    return {
        "certificate": issued.pem,
        "ca": ca_pem,
        "serialNumber": issued.serial,
        "notAfter": issued.not_after.isoformat(),
    }
