"""The agent's configuration file: the gateway's ``/system/remotecontrol`` plus agent settings.

The remote-control fields keep the names of the gateway API (``enable``, ``remoteHost``,
``remotePort``, ``deviceUUID``, ``psk``, ``keepalive``); the agent's own settings use the same
camelCase style. The file is JSON, or TOML when its name ends in ``.toml``; it holds the PSK,
so it is written with mode 0600 and the key is never logged or printed.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import tomllib
import uuid as uuidlib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgefleet.gateway.bodies import explain

DEFAULT_CONFIG_PATH = Path("/etc/edgefleet-agent/config.json")
CONFIG_ENV = "EDGEFLEET_AGENT_CONFIG"

_HEX = re.compile(r"[0-9a-fA-F]+")
_SERVICE = re.compile(r"[A-Za-z0-9@._-]{1,128}")
_HOST = re.compile(r"[^\s/]+")


class ConfigError(Exception):
    """A configuration that cannot be read or is not valid; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Command = list[str]


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    # --- the gateway's /system/remotecontrol -------------------------------------------------
    enable: bool = True
    """False: ``run`` stays idle (does not connect) until stopped."""
    remoteHost: str = Field(min_length=1, max_length=253)
    remotePort: int = Field(default=8883, ge=1, le=65535)
    deviceUUID: str
    psk: SecretStr | None = None
    """Hex PSK from registration (64 hex digits = 32 bytes); required with ``tls = "psk"``."""
    keepalive: int = Field(default=60, ge=5, le=65535)

    # --- connection ----------------------------------------------------------------------------
    tls: Literal["psk", "cert"] = "psk"
    certFile: Path | None = None
    keyFile: Path | None = None
    caFile: Path | None = None
    """With ``tls = "cert"``: the CA that signed the broker's certificate (default: system CAs)."""
    cleanSession: bool = False
    """False keeps the broker session, so requests sent while offline are delivered later."""

    # --- agent -----------------------------------------------------------------------------------
    dataDir: Path = Path("/var/lib/edgefleet-agent")
    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    disabledHandlers: list[str] = Field(default_factory=list)
    """Names of ``edgefleet.agent.handlers`` entry points not to load."""
    properties: dict[str, Any] = Field(default_factory=dict)
    """Overrides and additions for ``GET /system/properties`` (modelName, serialNumber, …)."""

    rebootCommand: Command = Field(default_factory=lambda: ["systemctl", "reboot"], min_length=1)
    rebootDelay: float = Field(default=3.0, ge=0, le=3600)
    """Seconds between the answer and the reboot when the request gives no ``delay``, and
    between a firmware upgrade's (or an import's) result and its reboot."""
    rebootAfterFirmware: bool = True
    """Reboot once a firmware upgrade succeeded, as ThingsPro gateways do."""
    rebootAfterImport: bool = False
    """Reboot after a configuration import, as ThingsPro gateways do (off: the scopes here are
    the host owner's paths, which may not need a reboot)."""

    firmwareInstallCommand: Command | None = None
    """Run with the downloaded file (``{file}`` in an argument, else appended); none: only
    download and verify."""
    downloadTimeout: float = Field(default=600.0, gt=0)
    maxDownloadBytes: int = Field(default=4 * 1024**3, gt=0)

    configScopes: dict[str, list[Path]] = Field(
        default_factory=lambda: {"system": [Path("/etc/edgefleet-agent")]}
    )
    """Export/import scopes → the absolute paths they cover."""

    syslogCommand: Command | None = None
    """None: ``journalctl`` when installed, else the tail of ``syslogFiles``; ``[]``: files only.
    ``{lines}`` in an argument is replaced by ``syslogLines``."""
    syslogFiles: list[Path] = Field(
        default_factory=lambda: [Path("/var/log/syslog"), Path("/var/log/messages")]
    )
    syslogLines: int = Field(default=5000, ge=1, le=1_000_000)

    services: list[str] = Field(default_factory=lambda: ["ssh", "rsyslog"])
    """The services ``/system/services`` may show and switch; others are 404."""
    serviceStatusCommand: Command = Field(
        default_factory=lambda: ["systemctl", "is-active", "{name}"], min_length=1
    )
    serviceStartCommand: Command = Field(
        default_factory=lambda: ["systemctl", "start", "{name}"], min_length=1
    )
    serviceStopCommand: Command = Field(
        default_factory=lambda: ["systemctl", "stop", "{name}"], min_length=1
    )
    commandTimeout: float = Field(default=300.0, gt=0)

    @field_validator("remoteHost")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOST.fullmatch(v):
            raise ValueError("must be a host name or address")
        return v

    @field_validator("deviceUUID")
    @classmethod
    def _uuid(cls, v: str) -> str:
        try:
            uuidlib.UUID(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a UUID") from None
        if v.strip() != v or "/" in v:
            raise ValueError(f"{v!r} is not a UUID")
        return v

    @field_validator("psk")
    @classmethod
    def _psk(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        key = v.get_secret_value()
        if not _HEX.fullmatch(key) or len(key) % 2:
            raise ValueError("must be hex digits (an even number of them)")
        if len(key) > 512:
            raise ValueError("is longer than 256 bytes")
        return v

    @field_validator("services")
    @classmethod
    def _services(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _SERVICE.fullmatch(name):
                raise ValueError(f"{name!r} is not a service name")
        return v

    @field_validator("configScopes")
    @classmethod
    def _scopes(cls, v: dict[str, list[Path]]) -> dict[str, list[Path]]:
        for scope, paths in v.items():
            for p in paths:
                if not p.is_absolute() or ".." in p.parts:
                    raise ValueError(f"scope {scope!r}: {p} must be an absolute path")
        return v

    @model_validator(mode="after")
    def _tls(self) -> AgentConfig:
        if self.tls == "psk" and self.psk is None:
            raise ValueError("psk is required with tls = psk")
        if self.tls == "cert" and (self.certFile is None or self.keyFile is None):
            raise ValueError("certFile and keyFile are required with tls = cert")
        return self

    def psk_hex(self) -> str:
        if self.psk is None:
            raise ConfigError("no psk configured")
        return self.psk.get_secret_value()

    def to_document(self) -> dict[str, Any]:
        """Plain data for the file, the PSK included (and ``None`` values left out)."""
        doc = self.model_dump(mode="json", exclude_none=True)
        if self.psk is not None:
            doc["psk"] = self.psk.get_secret_value()
        return doc

    def masked(self) -> dict[str, Any]:
        doc = self.to_document()
        if "psk" in doc:
            doc["psk"] = "********"
        return doc


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def validate(doc: dict[str, Any]) -> AgentConfig:
    try:
        return AgentConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {explain(exc)}") from None


def read_document(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run `edgefleet-agent configure`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid {_kind(path)}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: must hold an object")
    return doc


def load(path: Path) -> AgentConfig:
    return validate(read_document(path))


def is_private(path: Path) -> bool:
    """True when neither group nor others may read the file."""
    return not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def save(config: AgentConfig, path: Path) -> None:
    """Write atomically with mode 0600 (the parent directory is made 0700 if missing)."""
    doc = config.to_document()
    text = dumps_toml(doc) if path.suffix == ".toml" else json.dumps(doc, indent=2) + "\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _kind(path: Path) -> str:
    return "TOML" if path.suffix == ".toml" else "JSON"


# --- a small TOML writer (tomllib only reads) ------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("TOML output cannot hold nan or inf here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = (f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None)
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"cannot write {type(v).__name__} as TOML")


def dumps_toml(doc: dict[str, Any]) -> str:
    """Scalars and arrays first, then one ``[table]`` per nested object (inline below that)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append("")
            lines.append(f"[{_key(k)}]")
            lines.extend(f"{_key(sk)} = {_value(sv)}" for sk, sv in v.items() if sv is not None)
    return "\n".join(lines) + "\n"
