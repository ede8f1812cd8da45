"""The CA: device certificates from CSRs, server certificates, CRLs (real cryptography)."""

from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import ValidationError
from edgefleet.pki import CA

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def make_csr(cn: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.create(NOW)


def test_a_device_certificate_names_the_device_whatever_the_csr_asked(ca: CA) -> None:
    device = str(uuidlib.uuid4())
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue_device(make_csr("somebody-else", key), device, NOW, 30)
    cert = issued.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (issued.not_after - NOW).days == 30


def test_the_ca_survives_a_round_trip_through_pem(ca: CA) -> None:
    again = CA.load(ca.cert_pem, ca.key_pem())
    issued = again.issue_device(make_csr("x"), "u", NOW, 1)
    issued.cert.verify_directly_issued_by(ca.cert)


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("not a csr", "not a PEM"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----", "PEM"),
        (None, "2048"),
        ("x" * 20000, "too large"),
    ],
)
def test_bad_csrs_are_refused(ca: CA, csr: str | None, message: str) -> None:
    if csr is None:
        csr = make_csr("x", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ValidationError, match=message):
        ca.issue_device(csr, "u", NOW, 1)


def test_a_tampered_csr_is_refused(ca: CA) -> None:
    good = x509.load_pem_x509_csr(make_csr("x").encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(ValidationError, match="signature"):
        ca.issue_device(pem, "u", NOW, 1)


def test_server_certificate_names_and_crl(ca: CA) -> None:
    issued, key_pem = ca.issue_server(["broker.example", "127.0.0.1"], NOW)
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert serialization.load_pem_private_key(key_pem.encode(), None)
    revoked = ca.issue_device(make_csr("x"), "u", NOW, 1)
    crl = x509.load_pem_x509_crl(ca.crl([(revoked.serial, NOW)], NOW).encode())
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(revoked.cert.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(issued.cert.serial_number) is None
