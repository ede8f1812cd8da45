"""Settings: one object, built once at start-up and passed down.

Sources, highest priority first: keyword arguments, environment variables
(``EDGEFLEET_*``; nested groups with ``__``, e.g. ``EDGEFLEET_LOGIN__MAX_RETRY``),
a TOML file named by ``EDGEFLEET_CONFIG``, then the embedded defaults below.
The embedded defaults run a single node with no configuration at all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus, urlsplit

from pydantic import (
    BaseModel,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edgefleet.domain.nodes import BrokerNode, parse_address, parse_node


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgefleet"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class HTTPSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = ""
    """URL gateways and browsers use to reach the server; empty means http://host:port."""
    cookie_secure: bool = False
    session_ttl_seconds: int = Field(default=12 * 3600, ge=60)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Addresses or networks of the reverse proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed (comma-separated or a JSON list in the environment);
    empty: none, the peer's own address is the client's."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """The largest request body outside uploads (JSON); uploads have
    ``storage.max_file_bytes`` per file."""
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long a request body may take to arrive, plus a second per 1024 bytes received,
    before the answer is 408 and the connection closed (a client that stopped sending, or
    trickled a byte at a time, held its request for ever)."""

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return _split(v)  # comma-separated, or a JSON list as other network settings

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.0/16)"
                ) from None
        return v


class LoginSettings(BaseModel):
    """Password guessing: per (account, address) and per address, a few failures are free,
    then each further attempt waits a delay that doubles up to ``ban_time``
    (docs/security.md). The names are the original's fail2ban settings."""

    max_retry: int = Field(default=5, ge=1, le=10)
    """Failed attempts on one account from one address before delays start."""
    address_max_retry: int = Field(default=20, ge=1, le=1000)
    """Failed attempts from one address, over all accounts, before its delays start."""
    find_time: int = Field(default=600, ge=60, le=3600)
    """How long failures are remembered after the last delay they caused ran out."""
    ban_time: int = Field(default=600, ge=60, le=3600)
    """The longest delay between two attempts."""
    hash_workers: int = Field(default=0, ge=0, le=64)
    """Threads that hash and check passwords; 0: half the cores (at least 1, at most 4)."""


PRIVATE_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
)
"""The default ``mqtt.node_networks``: RFC 1918, carrier-grade NAT (RFC 6598), unique local
IPv6 and loopback."""


class MQTTSettings(BaseModel):
    """The broker: gateways on a TLS-PSK listener, the server on its own loopback listener."""

    gateway_host: str = "0.0.0.0"  # noqa: S104 - gateways connect from the network
    gateway_port: int = Field(default=8883, ge=1, le=65535)
    server_host: str = "127.0.0.1"
    server_port: int = Field(default=18830, ge=1, le=65535)
    """Not 1883, so that a system broker already on 1883 does not collide with the embedded one."""
    server_username: str = "edgefleet-server"
    server_password: SecretStr = SecretStr("")
    """Empty means a generated password kept in ``data_dir/mqtt-server.password``."""
    embedded: bool = True
    """Start and supervise a Mosquitto; false means connect to ``server_host:server_port``."""
    client_id: str = ""
    """The server's MQTT client id; empty means ``edgefleet-<hostname>``. Unique per instance."""
    clean_session: bool = False
    """False: the broker keeps the server's session (subscriptions, what it has not
    acknowledged) while it is away, and it resumes where it left off, which suits an id that
    stays (one server, a fixed ``client_id``). True: the broker drops the session when the
    server disconnects; for ids that change with every replacement (Kubernetes pods, auto-scaled
    instances named by their host), whose sessions would otherwise pile up on the broker."""
    psk_hint: str = "edgefleet"
    cert_port: int = Field(default=0, ge=0, le=65535)
    """A second gateway listener for X.509 client certificates from the server's CA
    (TLS, CN = device uuid); 0 turns it off. 8884 is the usual choice."""
    cert_hostnames: list[str] = Field(default_factory=list)
    """Names gateways use to reach the broker, for its server certificate (default: this
    host's name, localhost, 127.0.0.1 and gateway_host)."""
    shared_group: str = Field(default="", pattern=r"^[A-Za-z0-9_-]*$")
    """Non-empty: subscribe to gateways' topics as MQTT shared subscriptions
    (``$share/<group>/…``), so the server instances of one group split the inbound stream.
    Needs a broker that carries ``$`` topics to shared subscriptions (EMQX); Mosquitto 2.0
    does not."""
    broker_dir: Path | None = None
    """Where the Mosquitto configuration is written; empty means ``data_dir/mosquitto``."""
    presence_sweep_seconds: float = Field(default=300, ge=0)
    """Probe the gateways held online that said nothing for this long (a broker node that
    dies may publish no wills); 0 turns the sweep off. Only instances that ingest events
    sweep, and none with ``shared_group``."""
    nodes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Independent broker nodes behind a TCP load balancer, each ``name=host:port`` (its
    server listener; the name ``[a-z0-9-]+``), comma-separated or a JSON list in the
    environment. Each server instance publishes to every node; each node's inbound stream is
    consumed by one instance at a time, under a lease in the database (docs/scaling.md).
    Empty: one broker, ``server_host:server_port`` (or the embedded one)."""
    nodes_dns: str = ""
    """``host:port``: every address the name resolves to (A and AAAA) is a node, named after
    its address, looked up again every 30 s; beside ``nodes`` or instead of it."""
    node_registration: bool = False
    """Also take as nodes those that register themselves (``edgefleet broker-node --name N
    --advertise HOST:PORT`` at every key sync: an auto-scaled tier with no list to keep); a
    node that has not registered for ``REGISTRATION_TTL`` (services/nodes.py) is dropped."""
    node_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS)
    )
    """The networks a registering node's address may be in (CIDR, comma-separated or a JSON
    list): the servers send it their MQTT password and publish gateways' requests to it, so
    a broker token must not point them anywhere else. The address must be an IP address (no
    host name: its answer could change after the check). Default: the private ranges and
    loopback. Link-local (169.254.0.0/16: cloud metadata, fe80::/10), multicast and
    unspecified addresses are refused whatever this says."""
    max_registered_nodes: int = Field(default=100, ge=1)
    """At most this many nodes registered at once (each costs every server instance a link);
    one more is refused (409) until one is withdrawn or expires."""
    node_grace_seconds: float = Field(default=30, gt=0)
    """A leased node whose link has been down this long is taken for dead: the gateways still
    held online on it are marked offline (their wills died with it)."""

    @field_validator("nodes", mode="before")
    @classmethod
    def _split_nodes(cls, v: Any) -> Any:
        return _split(v)

    @field_validator("nodes")
    @classmethod
    def _valid_nodes(cls, v: list[str]) -> list[str]:
        names = [parse_node(entry).name for entry in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"node names must be unique: {', '.join(twice)}")
        return v

    @field_validator("node_networks", mode="before")
    @classmethod
    def _split_networks(cls, v: Any) -> Any:
        return _split(v)

    @field_validator("node_networks")
    @classmethod
    def _valid_networks(cls, v: list[str]) -> list[str]:
        for entry in v:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the entry
        return v

    @property
    def allowed_node_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(entry, strict=False) for entry in self.node_networks]

    @field_validator("nodes_dns")
    @classmethod
    def _valid_dns(cls, v: str) -> str:
        if v:
            parse_address(v)
        return v

    @model_validator(mode="after")
    def _nodes_are_external(self) -> MQTTSettings:
        if self.partitioned and self.embedded:
            raise ValueError(
                "mqtt.nodes, mqtt.nodes_dns and mqtt.node_registration name external broker "
                "nodes: set mqtt.embedded "
                "to false (EDGEFLEET_MQTT__EMBEDDED=false); the embedded broker is one node"
            )
        return self

    @property
    def broker_nodes(self) -> list[BrokerNode]:
        """The nodes ``nodes`` lists (those of ``nodes_dns`` are found at run time)."""
        return [parse_node(entry) for entry in self.nodes]

    @property
    def partitioned(self) -> bool:
        """Several broker nodes, partitioned by lease (not the single broker link)."""
        return bool(self.nodes or self.nodes_dns or self.node_registration)


def _split(v: Any) -> Any:
    """A list from the environment: comma-separated, or a JSON list."""
    if isinstance(v, str):
        if v.lstrip().startswith("["):
            return json.loads(v)
        return [part.strip() for part in v.split(",") if part.strip()]
    return v


class StorageSettings(BaseModel):
    """Where uploaded files (filebin, firmware) are kept, and how big they may be."""

    url: str = ""
    """Empty: ``data_dir/files``; ``file:///path``: that directory; ``s3://bucket/prefix``: S3."""
    s3_endpoint_url: str = ""
    """An S3-API server other than AWS (MinIO, Ceph, …); empty means AWS."""
    s3_region: str = ""
    """The bucket's region; empty means boto3's own default (``AWS_DEFAULT_REGION``, …)."""
    max_file_bytes: int = Field(default=500 * 1024 * 1024, ge=1)
    """The largest file one upload may carry (the original's filebin allowed 500 MB)."""
    url_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    """How long the download URL in a filebin answer stays valid."""
    file_ttl_seconds: int = Field(default=3600, ge=0)
    """Uploaded files (filebin, task attachments) are deleted this long after their upload,
    unless the firmware catalogue or a task refers to them (a task still open, or finished
    less than this long ago); 0 keeps them for ever. The original's filebin kept files about
    an hour."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v and not v.startswith(("file:///", "s3://")):
            raise ValueError("must be empty, file:///absolute/path or s3://bucket/prefix")
        if v.startswith("s3://") and not urlsplit(v).netloc:
            raise ValueError("an s3:// URL needs a bucket: s3://bucket/prefix")
        return v


class EventSettings(BaseModel):
    """The event service: ingest, retention, webhooks."""

    ingest: bool = True
    """Store gateways' events and statuses received by this instance. With several instances
    on a broker without shared subscriptions, leave it on in one of them only."""
    queue_size: int = Field(default=20_000, ge=100)
    """Events held in memory before the MQTT consumer waits (and the broker queues)."""
    batch_size: int = Field(default=5_000, ge=1)
    batch_delay: float = Field(default=0.02, ge=0, le=5)
    """Seconds a batch may gather before it is written."""
    retention_days: float = Field(default=30, ge=0)
    """Events older than this are deleted (open alarms are kept); 0 keeps everything."""
    retention_interval_seconds: float = Field(default=3600, gt=0)
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=120)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=5, gt=0)
    """First retry delay; doubled at each attempt, up to an hour."""
    webhook_concurrency: int = Field(default=32, ge=1, le=1000)
    """Deliveries in flight at once; one endpoint gets at most a quarter of them."""
    webhook_allow_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    """Networks webhooks may reach although they are internal (loopback, private,
    link-local, this server's own addresses…: domain/egress.py), e.g. ``["10.1.2.0/24"]``
    for a receiver on the LAN. Empty: only global addresses."""
    gateway_rate: float = Field(default=10, ge=0)
    """Messages a second the server takes from one gateway on average (events, answers and
    statuses); the excess is dropped (and acknowledged), counted, and raises an alarm. A real
    gateway sends a few a second at most. 0: no limit."""
    gateway_burst: int = Field(default=1000, ge=1)
    """Messages one gateway may send at once above the rate: an agent's outbox replayed after
    an outage (up to 1000 events), or what the broker held for the server while it was away."""
    gateway_alarm_seconds: float = Field(default=300, gt=0)
    """At most one rate-limit alarm per gateway in this many seconds."""


class ConsoleSettings(BaseModel):
    """The web console."""

    map_tiles_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    """The map's tile server (``{z}/{x}/{y}``, optionally ``{s}`` and ``{r}``); empty: no tiles,
    the offline basemap only (also used when the tiles do not load). The browser fetches them,
    so a console without internet needs a local tile server or this empty."""
    map_tiles_attribution: str = "© OpenStreetMap contributors"
    """Credited on the map, as tile servers require."""
    map_tiles_max_zoom: int = Field(default=19, ge=1, le=22)

    @field_validator("map_tiles_url")
    @classmethod
    def _tiles(cls, v: str) -> str:
        if v and not (v.startswith(("https://", "http://")) and "{z}" in v):
            raise ValueError("must be empty or an http(s) URL with {z}, {x} and {y}")
        return v


BROKER_TOKEN_MIN_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in ``data_dir``."""
    secret_key: SecretStr = SecretStr("")
    """Encrypts secrets at rest (device PSKs); empty means a key file in ``data_dir``."""
    broker_token: SecretStr = SecretStr("")
    """A broker-scope credential the broker nodes send in ``mx-api-token``, provisioned
    here so that no one has to create and copy a token; accepted on ``/api/v1/broker/``
    only. Empty: none (nodes use a broker-scope API token made with ``edgefleet token``)."""
    admin_email: str = "admin@localhost"
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.CONSOLE
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    login: LoginSettings = Field(default_factory=LoginSettings)
    mqtt: MQTTSettings = Field(default_factory=MQTTSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        _refuse_unknown_nested(settings_cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("EDGEFLEET_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ValueError(f"EDGEFLEET_CONFIG names {config_file!r}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("broker_token")
    @classmethod
    def _long_broker_token(cls, v: SecretStr) -> SecretStr:
        token = v.get_secret_value().strip()
        if token and len(token) < BROKER_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"broker_token (EDGEFLEET_BROKER_TOKEN) must have at least "
                f"{BROKER_TOKEN_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`), or be empty"
            )
        return SecretStr(token)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            problems = []
            if not self.database_url or self.database_url.startswith("sqlite"):
                problems.append("database_url must name a PostgreSQL server")
            if not self.secret_key.get_secret_value():
                problems.append("secret_key must be set (EDGEFLEET_SECRET_KEY)")
            if not self.http.cookie_secure:
                problems.append("http.cookie_secure must be true behind HTTPS")
            if problems:
                raise ValueError("unsafe production settings: " + "; ".join(problems))
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'edgefleet.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def public_url(self) -> str:
        return self.http.public_url or f"http://{self.http.host}:{self.http.port}"

    def resolved_secret_key(self) -> bytes:
        """The key material for at-rest encryption; made once into ``data_dir`` if unset."""
        configured = self.secret_key.get_secret_value()
        if configured:
            return configured.encode()
        return _secret_file(self.data_dir / "secret.key").encode()

    def mqtt_server_password(self) -> str:
        """The server's broker password; made once into ``data_dir`` if unset."""
        configured = self.mqtt.server_password.get_secret_value()
        return configured or _secret_file(self.data_dir / "mqtt-server.password")

    @property
    def broker_dir(self) -> Path:
        return self.mqtt.broker_dir or self.data_dir / "mosquitto"

    @property
    def files_dir(self) -> Path:
        """The local file store's directory (when ``storage.url`` is not ``s3://``)."""
        url = self.storage.url
        return Path(url[len("file://") :]) if url.startswith("file://") else self.data_dir / "files"

    def masked(self) -> dict[str, Any]:
        """Settings as plain data with every secret replaced, for ``config show``: each
        setting whose name looks secret (:func:`is_secret_name`), and in every URL the
        password and each query parameter whose name looks secret (``sslpassword=``, …)."""
        data = self.model_dump(mode="json")
        data["database_url"] = self.resolved_database_url
        shown = _masked(data)
        assert isinstance(shown, dict)
        if not self.secret_key.get_secret_value():
            shown["secret_key"] = KEY_FILE
        if not self.mqtt.server_password.get_secret_value():
            shown["mqtt"]["server_password"] = KEY_FILE
        return shown


MASK = "********"
KEY_FILE = "(key file)"
"""What ``config show`` says of a secret generated into the data directory."""

_SECRET_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "private_key",
    "signature",
)
_SECRET_NAMES = frozenset({"pass", "pwd", "key", "sig", "auth", "psk"})


def is_secret_name(name: str) -> bool:
    """Whether a setting or URL query parameter of this name holds a secret (``password``,
    ``sslpassword``, ``secret_key``, ``X-Amz-Signature``, ``key``, …). ``sslkey``,
    ``sslcert`` and ``sslrootcert`` name files, and a file name is no secret."""
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(part in lowered for part in _SECRET_PARTS)


def _refuse_unknown_nested(settings_cls: type[BaseSettings]) -> None:
    """An ``EDGEFLEET_<GROUP>__<NAME>`` variable must name a setting, as a config file's key
    must: the environment source ignores the others, so ``EDGEFLEET_DATABASE__URL`` (for
    ``EDGEFLEET_DATABASE_URL``) ran the server on SQLite without a word. Only names with the
    nesting delimiter are checked: other ``EDGEFLEET_*`` variables belong to tools (tests,
    benchmarks, deployments)."""
    unknown = []
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith("EDGEFLEET_") or "__" not in upper:
            continue
        group, _, key = upper[len("EDGEFLEET_") :].partition("__")
        field = settings_cls.model_fields.get(group.lower())
        fields = getattr(field.annotation, "model_fields", None) if field is not None else None
        if fields is None or key.lower() not in fields:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"{', '.join(sorted(unknown))}: not a setting (nested settings are "
            "EDGEFLEET_<GROUP>__<NAME> with a group of http, login, mqtt, storage, events, "
            "console; the others have one underscore, e.g. EDGEFLEET_DATABASE_URL)"
        )


def mask_url(url: str) -> str:
    """``url`` with its password and the values of its secret-looking query parameters
    replaced by ``********``; anything that is not a ``scheme://`` URL as it is."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "(a URL that does not parse)"
    netloc = parts.netloc
    if has_password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    query = "&".join(_mask_parameter(p) for p in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    # not urlunsplit: it drops an empty authority, turning sqlite:////abs/path into a host
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def _mask_parameter(parameter: str) -> str:
    name, eq, _ = parameter.partition("=")
    return f"{name}={MASK}" if eq and is_secret_name(unquote_plus(name)) else parameter


def _masked(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, name) for v in value]
    if isinstance(value, str):
        if value and is_secret_name(name):
            return MASK
        return mask_url(value)
    return value


def _secret_file(path: Path) -> str:
    """A random secret kept in ``path`` (mode 600), made on first use."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
