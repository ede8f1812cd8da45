"""Certificates for gateways and brokers that use X.509 instead of TLS-PSK (``cryptography``).

The server is a small CA: an ECDSA P-256 root made once, which signs
- device certificates from a gateway's CSR: subject CN = the device uuid (whatever the CSR
  asked), the CSR's public key, client-auth only;
- a broker's server certificate, for the listener gateways connect to;
- a CRL of revoked device certificates (a deleted device's certificates are revoked).
Pure functions: storage is the PKI service's business.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import ValidationError

MAX_CSR_BYTES = 16 * 1024
CA_NAME = "edgefleet device CA"


@dataclass(frozen=True)
class TlsMaterial:
    """What the certificate listener needs, all PEM, from the server's CA."""

    ca: str
    cert: str
    key: str
    crl: str


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def serial(self) -> str:
        return f"{self.cert.serial_number:x}"

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @classmethod
    def create(cls, now: datetime, years: int = 20) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: str, key_pem: str) -> CA:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValidationError("the stored CA key is not an EC key")
        return cls(x509.load_pem_x509_certificate(cert_pem.encode()), key)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        now: datetime,
        days: int,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None = None,
    ) -> Issued:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()))

    def issue_device(self, csr_pem: str, device_uuid: str, now: datetime, days: int) -> Issued:
        """A client certificate for ``device_uuid`` with the key of ``csr_pem``."""
        csr = parse_csr(csr_pem)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, device_uuid),
            ]
        )
        return self._leaf(subject, csr.public_key(), now, days, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server(
        self, hostnames: Iterable[str], now: datetime, days: int = 825
    ) -> tuple[Issued, str]:
        """A broker's server certificate and its new key (PEM)."""
        names = list(dict.fromkeys(hostnames))
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        issued = self._leaf(
            subject,
            key.public_key(),
            now,
            days,
            ExtendedKeyUsageOID.SERVER_AUTH,
            x509.SubjectAlternativeName(alt),
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return issued, key_pem

    def crl(self, revoked: Iterable[tuple[str, datetime]], now: datetime, days: int = 30) -> str:
        """A CRL (PEM) listing ``(serial hex, revoked at)``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=days))
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(at.astimezone(UTC))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM).decode()


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """A CSR with a valid self-signature and an acceptable key, or ``ValidationError``."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise ValidationError("csr is too large")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.strip().encode())
    except ValueError as exc:
        raise ValidationError("csr is not a PEM certificate signing request") from exc
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise ValidationError("csr signature does not verify")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValidationError("csr RSA key must have at least 2048 bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < 256:
            raise ValidationError("csr EC key must be at least 256 bits")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValidationError("csr key must be RSA, EC or Ed25519")
    return csr
