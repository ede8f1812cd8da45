"""The server's certificate authority, kept in the database so every instance shares it.

The CA is made on first use (its key sealed by the server key). Device certificates are
recorded so that deleting a device revokes them (the CRL lists them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.pki import CertificateRepo
from edgefleet.db.tables import Authority, DeviceCertificate
from edgefleet.errors import DuplicateError
from edgefleet.pki import CA, Issued, TlsMaterial
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import FleetService
from edgefleet.settings import MQTTSettings

log = logging.getLogger(__name__)


class PkiService:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        fleet: FleetService,
        clock: Clock = utcnow,
        *,
        device_cert_days: int = 397,
    ) -> None:
        self.db = db
        self.box = box
        self.fleet = fleet
        self.clock = clock
        self.device_cert_days = device_cert_days
        self._ca: CA | None = None
        self._lock = asyncio.Lock()

    async def authority(self) -> CA:
        """The CA, loaded, or made and stored if there is none yet (once, across instances)."""
        if self._ca is not None:
            return self._ca
        async with self._lock:
            if self._ca is None:
                self._ca = await self._load() or await self._create()
        return self._ca

    async def _load(self) -> CA | None:
        async with self.db.session() as s:
            row = await CertificateRepo(s).authority()
            if row is None:
                return None
            return CA.load(row.cert_pem, self.box.open(row.key_sealed))

    async def _create(self) -> CA:
        ca = CA.create(self.clock())
        try:
            async with self.db.session() as s:
                await CertificateRepo(s).add_authority(
                    Authority(
                        id=1,
                        cert_pem=ca.cert_pem,
                        key_sealed=self.box.seal(ca.key_pem()),
                        created_at=self.clock(),
                    )
                )
        except DuplicateError:  # another instance made it first: use theirs
            loaded = await self._load()
            assert loaded is not None
            return loaded
        log.info("certificate authority created")
        return ca

    async def issue_device(self, device_uuid: str, csr_pem: str) -> Issued:
        await self.fleet.get_device(device_uuid)  # DeviceNotFoundError
        ca = await self.authority()
        now = self.clock()
        issued = ca.issue_device(csr_pem, device_uuid, now, self.device_cert_days)
        async with self.db.session() as s:
            await CertificateRepo(s).add(
                DeviceCertificate(
                    serial=issued.serial,
                    device_uuid=device_uuid,
                    issued_at=now,
                    not_after=issued.not_after,
                    revoked_at=None,
                )
            )
        log.info("certificate %s issued to %s", issued.serial, device_uuid)
        return issued

    async def revoke_devices(self, device_uuids: Sequence[str]) -> int:
        """Revoke every certificate of these devices; return how many were revoked."""
        if not device_uuids:
            return 0
        async with self.db.session() as s:
            return await CertificateRepo(s).revoke_devices(device_uuids, self.clock())

    async def device_certificates(self, device_uuid: str) -> list[DeviceCertificate]:
        async with self.db.session() as s:
            return await CertificateRepo(s).of_device(device_uuid)

    async def crl_pem(self) -> str:
        ca = await self.authority()
        now = self.clock()
        async with self.db.session() as s:
            revoked = await CertificateRepo(s).revoked(now)
        return ca.crl(revoked, now)

    async def server_certificate(self, hostnames: Sequence[str]) -> tuple[str, str]:
        """``(certificate PEM, key PEM)`` for a broker listener reached by ``hostnames``."""
        if not hostnames:
            raise ValueError("a server certificate needs at least one hostname")
        issued, key_pem = (await self.authority()).issue_server(hostnames, self.clock())
        return issued.pem, key_pem


def broker_hostnames(mqtt: MQTTSettings) -> list[str]:
    """Names in the broker's server certificate: configured, or this host's."""
    if mqtt.cert_hostnames:
        return list(mqtt.cert_hostnames)
    names = [socket.gethostname(), "localhost", "127.0.0.1"]
    if mqtt.gateway_host not in ("0.0.0.0", "::", ""):  # noqa: S104
        names.insert(0, mqtt.gateway_host)
    return list(dict.fromkeys(names))


async def broker_tls(pki: PkiService, mqtt: MQTTSettings) -> TlsMaterial:
    """CA, a fresh server certificate and key, and the current CRL, for a broker listener."""
    cert, key = await pki.server_certificate(broker_hostnames(mqtt))
    return TlsMaterial(
        ca=(await pki.authority()).cert_pem, cert=cert, key=key, crl=await pki.crl_pem()
    )
