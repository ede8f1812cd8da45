"""Agent configuration: validation, JSON/TOML round trip with mode 0600, the CLI, TLS."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from edgefleet.agent import config as cfg
from edgefleet.agent.core import backoff, tls_context
from edgefleet.agent.main import app
from tests.unit.test_agent_support import PSK, UUID, agent_config

runner = CliRunner()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["config.json", "config.toml"])
def test_round_trip_keeps_everything_and_the_file_is_private(tmp_path: Path, name: str) -> None:
    config = agent_config(
        tmp_path,
        properties={"modelName": "UC-8112", "gps": {"lat": 25.0, "lng": 121.5}, "n": 3},
        firmwareInstallCommand=["/usr/sbin/fw-install", "--image", "{file}"],
        services=["ssh", "getty@tty1"],
        rebootDelay=1.5,
    )
    path = tmp_path / "etc" / name
    cfg.save(config, path)
    assert mode(path) == 0o600
    loaded = cfg.load(path)
    assert loaded == config
    assert loaded.psk_hex() == PSK
    if name.endswith(".toml"):
        assert tomllib.loads(path.read_text())["deviceUUID"] == UUID
    else:
        assert json.loads(path.read_text())["psk"] == PSK


def test_saving_over_a_readable_file_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0o644)
    assert not cfg.is_private(path)
    cfg.save(agent_config(tmp_path), path)
    assert mode(path) == 0o600 and cfg.is_private(path)


def test_the_psk_is_masked_everywhere_but_the_file(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    assert PSK not in repr(config) and PSK not in str(config)
    assert config.masked()["psk"] == "********"
    assert config.to_document()["psk"] == PSK


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("psk", "not-hex", "psk: must be hex digits"),
        ("psk", "abc", "psk: must be hex digits"),
        ("deviceUUID", "gateway-1", "deviceUUID: 'gateway-1' is not a UUID"),
        ("remotePort", 70000, "remotePort: Input should be less than or equal to 65535"),
        ("remotePort", 0, "remotePort: Input should be greater than or equal to 1"),
        ("remoteHost", "bad host", "remoteHost: must be a host name"),
        ("keepalive", 1, "keepalive"),
        ("services", ["ssh; rm -rf /"], "is not a service name"),
        ("configScopes", {"system": ["etc/relative"]}, "must be an absolute path"),
        ("rebootCommand", [], "rebootCommand"),
        ("unknownSetting", 1, "unknownSetting: Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_with_one_line(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    doc = agent_config(tmp_path).to_document()
    doc[field] = value
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.validate(doc)
    assert message in caught.value.message and "\n" not in caught.value.message
    assert PSK not in caught.value.message


def test_tls_modes_need_their_material(tmp_path: Path) -> None:
    doc = agent_config(tmp_path).to_document()
    del doc["psk"]
    with pytest.raises(cfg.ConfigError, match="psk is required"):
        cfg.validate(doc)
    with pytest.raises(cfg.ConfigError, match="certFile and keyFile are required"):
        cfg.validate({**doc, "tls": "cert"})
    config = cfg.validate({**doc, "tls": "cert", "certFile": "/c.pem", "keyFile": "/k.pem"})
    assert config.psk is None


def test_unreadable_and_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="no such file"):
        cfg.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.toml"
    broken.write_text("remoteHost = ")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(cfg.ConfigError, match="must hold an object"):
        cfg.load(listed)


def test_the_default_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cfg.CONFIG_ENV, raising=False)
    assert cfg.default_config_path() == Path("/etc/edgefleet-agent/config.json")
    monkeypatch.setenv(cfg.CONFIG_ENV, "/tmp/agent.toml")
    assert cfg.default_config_path() == Path("/tmp/agent.toml")


# --- CLI -------------------------------------------------------------------------------------


def configure(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["configure", *args])
    return r.exit_code, r.output


def test_configure_writes_a_private_file_and_keeps_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "config.json"
    code, out = configure(
        *("--host", "fleet.example.com", "--uuid", UUID, "--psk", PSK, "--config", str(path)),
        *("--reboot-command", "touch /tmp/x", "--data-dir", str(tmp_path / "data")),
    )
    assert code == 0, out
    assert PSK not in out
    assert mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert doc["remoteHost"] == "fleet.example.com" and doc["remotePort"] == 8883
    assert doc["enable"] is True and doc["psk"] == PSK and doc["deviceUUID"] == UUID
    assert doc["rebootCommand"] == ["touch", "/tmp/x"]

    # a second configure changes the connection and keeps the rest
    code, out = configure(
        *("--host", "10.0.0.5", "--port", "18883", "--uuid", UUID, "--config", str(path))
    )
    assert code == 0, out
    doc = json.loads(path.read_text())
    assert doc["remoteHost"] == "10.0.0.5" and doc["remotePort"] == 18883
    assert doc["psk"] == PSK and doc["rebootCommand"] == ["touch", "/tmp/x"]

    r = runner.invoke(app, ["show", "--config", str(path)])
    assert r.exit_code == 0 and PSK not in r.output
    assert json.loads(r.output)["psk"] == "********"


def test_configure_uses_the_environment_path_and_writes_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    monkeypatch.setenv(cfg.CONFIG_ENV, str(path))
    code, out = configure("--host", "h", "--uuid", UUID, "--psk", PSK)
    assert code == 0, out
    assert tomllib.loads(path.read_text())["remoteHost"] == "h"
    assert cfg.load(path).psk_hex() == PSK


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--psk", "zz"), "psk: must be hex digits"),
        (("--uuid", "nope"), "deviceUUID: 'nope' is not a UUID"),
        (("--port", "65536"), "remotePort"),
        (("--tls", "cert"), "certFile and keyFile are required"),
        (("--tls", "smoke"), "tls: Input should be 'psk' or 'cert'"),
        (("--reboot-command", "'unclosed"), "--reboot-command: No closing quotation"),
    ],
)
def test_configure_refuses_bad_input_with_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "config.json"
    base = {"--host": "h", "--uuid": UUID, "--psk": PSK, "--config": str(path)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    code, out = configure(*[x for kv in base.items() for x in kv])
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgefleet-agent: error:")
    assert message in lines[0]
    assert not path.exists()


def test_run_refuses_a_missing_config_with_exit_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", "--config", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "no such file" in r.output


# --- connection ------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    import random

    rng = random.Random(7)
    delays = [backoff(a, rng) for a in range(12)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    assert len({round(d, 6) for d in delays[7:]}) > 1  # jittered, not a fixed cap


def test_tls_context_for_psk_and_for_a_client_certificate(tmp_path: Path) -> None:
    assert isinstance(tls_context(agent_config(tmp_path)), ssl.SSLContext)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, UUID)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    config = agent_config(
        tmp_path, tls="cert", certFile=str(cert_file), keyFile=str(key_file), caFile=str(cert_file)
    )
    ctx = tls_context(config)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c["subject"] for c in ctx.get_ca_certs())
    with pytest.raises(ssl.SSLError):
        tls_context(config.model_copy(update={"keyFile": cert_file}))
