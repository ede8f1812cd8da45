"""``edgefleet broker-config emqx`` run as a user would (SQLite in a temporary data dir):
the files, their modes, the token they carry, nothing secret on the terminal, clear refusals
(TLS-PSK among them: EMQX is configured for X.509 gateways only)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyhocon import ConfigFactory
from typer.testing import CliRunner, Result

from edgefleet.cli.main import app

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith(("EDGEFLEET_", "EMQX_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    invoke("users", "create", "admin@example.com", "--admin")
    return tmp_path


def invoke(*args: str, code: int = 0) -> Result:
    r = runner.invoke(app, list(args))
    assert r.exit_code == code, f"exit {r.exit_code}: {r.output}"
    return r


def said(r: Result) -> str:
    """What the terminal showed, without rich's box and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())


def register(n: int) -> dict[str, str]:
    out = {}
    for i in range(n):
        dev = json.loads(
            invoke("devices", "register", "--mac", f"0090e80000{i:02x}", "--json").stdout
        )
        out[dev["uuid"]] = dev["psk"]
    return out


def broker_tokens() -> list[dict[str, object]]:
    tokens = json.loads(invoke("tokens", "list", "--json").stdout)
    return [t for t in tokens if t["scope"] == "broker"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


EMQX_STATIC = (
    "broker-config",
    "emqx",
    "--x509",
    "--discovery",
    "static",
    "--node-name",
    "emqx@10.0.0.1",
    "--seeds",
    "emqx@10.0.0.1,emqx@10.0.0.2",
)


def test_emqx_writes_private_files_and_the_servers_tls_material(cli_env: Path) -> None:
    devices = register(2)
    (cli_env / "cookie").write_text("cookie-for-tests\n")
    out = cli_env / "emqx"
    r = invoke(
        *EMQX_STATIC,
        "--cookie-file",
        str(cli_env / "cookie"),
        "--user",
        "admin@example.com",
        "--dir",
        str(out),
        "--server-url",
        "https://fleet.example.com/",
        "--gateway-port",
        "18883",
    )
    (token,) = broker_tokens()
    secret = (out / "broker.token").read_text().strip()
    assert str(token["prefix"]) in secret
    dashboard = (out / "dashboard.password").read_text().strip()
    for shown in (r.stdout, r.stderr):
        for value in (secret, "cookie-for-tests", dashboard, *devices.values()):
            assert value not in shown
    assert mode(out) == 0o700
    assert {p.name: mode(p) for p in out.iterdir()} == {
        "emqx.conf": 0o600,
        "broker.token": 0o600,
        "dashboard.password": 0o600,
        "ca.pem": 0o600,
        "server.pem": 0o600,
        "server.key": 0o600,
    }
    key_pem = (out / "server.key").read_text()
    assert key_pem not in r.output
    conf = ConfigFactory.parse_file(str(out / "emqx.conf"))
    assert conf["node.name"] == "emqx@10.0.0.1" and conf["node.cookie"] == "cookie-for-tests"
    assert conf["cluster.static.seeds"] == ["emqx@10.0.0.1", "emqx@10.0.0.2"]
    assert conf["listeners.ssl.default.bind"] == "0.0.0.0:18883"
    assert conf["listeners.tcp.default.bind"] == "127.0.0.1:18830"  # the settings' default
    assert conf["authentication"][0]["url"] == "https://fleet.example.com/api/v1/broker/authn"
    assert conf["authentication"][0]["headers"]["mx-api-token"] == secret
    assert conf["authorization.sources"][0]["headers"]["mx-api-token"] == secret
    assert conf["dashboard.default_password"] == dashboard
    ssl = conf["listeners.ssl.default.ssl_options"]
    assert (ssl["cacertfile"], ssl["certfile"], ssl["keyfile"]) == tuple(
        str(out / name) for name in ("ca.pem", "server.pem", "server.key")
    )
    assert conf["zones.gateways.mqtt.peer_cert_as_clientid"] == "cn"
    # the server certificate is the CA's and pairs with the key written beside it
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert cert.public_key() == key.public_key()
    assert not any(key in (out / "emqx.conf").read_text() for key in devices.values())

    # a second run keeps the token (and the dashboard password) instead of making another
    r = invoke(
        *EMQX_STATIC,
        "--cookie-file",
        str(cli_env / "cookie"),
        "--user",
        "admin@example.com",
        "--dir",
        str(out),
    )
    assert len(broker_tokens()) == 1 and "kept the broker token" in r.stdout
    assert (out / "broker.token").read_text().strip() == secret
    assert (out / "dashboard.password").read_text().strip() == dashboard


def test_emqx_takes_node_name_cookie_and_certificate_port_from_the_environment(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cli_env / "token").write_text("ef_given-token\n")
    monkeypatch.setenv("EDGEFLEET_MQTT__CERT_PORT", "8884")
    monkeypatch.setenv("EMQX_NODE__NAME", "emqx@emqx-0.emqx-headless.fleet.svc.cluster.local")
    monkeypatch.setenv("EMQX_NODE__COOKIE", "env-cookie")
    out = cli_env / "k8s"
    out.mkdir(mode=0o750)  # a directory that exists keeps its mode
    args = ["--k8s-service-name", "emqx-headless", "--k8s-namespace", "fleet"]
    r = invoke(
        "broker-config", "emqx", "--x509", "--discovery", "k8s", *args,
        "--k8s-address-type", "hostname", "--token-file", str(cli_env / "token"), "--dir", str(out),
    )  # fmt: skip
    assert "env-cookie" not in r.output and "ef_given-token" not in r.output
    conf = ConfigFactory.parse_file(str(out / "emqx.conf"))
    assert conf["node.name"] == "emqx@emqx-0.emqx-headless.fleet.svc.cluster.local"
    assert conf["node.cookie"] == "env-cookie"
    assert dict(conf["cluster.k8s"]) == {
        "apiserver": "https://kubernetes.default.svc:443",
        "service_name": "emqx-headless",
        "namespace": "fleet",
        "address_type": "hostname",
        "suffix": "svc.cluster.local",
    }
    assert "static" not in conf["cluster"]
    assert conf["listeners.ssl.default.bind"] == "0.0.0.0:8884"  # the certificate port
    assert conf["authentication"][0]["headers"]["mx-api-token"] == "ef_given-token"
    assert mode(out) == 0o750
    assert not broker_tokens()  # given, not made


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--user", "admin@example.com", "--token-file", "TOKEN"), "not both"),
        ((), "--token-file FILE, or --user EMAIL"),
        (("--user", "admin@example.com", "--no-cookie"), "same cookie"),
        (("--user", "admin@example.com", "--seeds", ""), "needs --seeds"),
        (
            ("--user", "admin@example.com", "--dns-name", "x.example"),
            "not used with --discovery static",
        ),
        (("--user", "admin@example.com", "--node-name", "emqx"), "name@host"),
        (("--user", "admin@example.com", "--server-url", "fleet:8080"), "http(s) URL"),
        (("--user", "admin@example.com", "--discovery", "consul"), "consul"),
    ],
)
def test_emqx_refuses_bad_combinations_before_writing_anything(
    cli_env: Path, args: tuple[str, ...], words: str
) -> None:
    (cli_env / "cookie").write_text("c\n")
    (cli_env / "TOKEN").write_text("ef_t\n")
    argv = [*EMQX_STATIC, "--dir", str(cli_env / "emqx")]
    if "--no-cookie" not in args:
        argv += ["--cookie-file", str(cli_env / "cookie")]
    for a in args:
        if a == "--no-cookie":
            continue
        argv.append(str(cli_env / "TOKEN") if a == "TOKEN" else a)
    # later options win: --seeds "" empties the seeds, --discovery/--node-name replace them
    r = invoke(*argv, code=2)
    assert words in said(r), said(r)
    assert not (cli_env / "emqx").exists()
    assert not broker_tokens()


def test_emqx_refuses_tls_psk_saying_why_before_writing_anything(cli_env: Path) -> None:
    (cli_env / "cookie").write_text("c\n")
    argv = [a for a in EMQX_STATIC if a != "--x509"]
    r = invoke(
        *argv, "--cookie-file", str(cli_env / "cookie"), "--user", "admin@example.com",
        "--dir", str(cli_env / "emqx"), code=2,
    )  # fmt: skip
    shown = said(r)
    assert "--x509" in shown and "cannot bind a TLS-PSK identity to the client id" in shown
    assert "edgefleet broker-node" in shown  # where PSK fleets go instead
    assert not (cli_env / "emqx").exists()
    assert not broker_tokens()
