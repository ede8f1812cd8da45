"""Composition root: the only place that turns Settings into concrete objects.

``build`` makes each object once, complete, in dependency order: by its constructor when that
is all it takes, by one of the builders below (``_files``, ``_tasks``, ``_messaging``…) when
it takes more. What an object calls (listeners, observers, hooks, sinks) it is given when it
is made; the container only names what was made. Two cycles are closed afterwards, each in
one place: the broker link's (it delivers into the router, which with the relay sends
through it: closed at the end of ``_messaging``), and the embedded broker's with the key
cache (the broker reads the keys, the cache tells it their changes: closed when messaging
starts, in ``Container.start_messaging``, after the first load of the keys, which the
broker's start writes whole).
"""

from __future__ import annotations

import functools
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from edgefleet import datadir
from edgefleet.brokers.embedded import EmbeddedMosquitto
from edgefleet.db.engine import Database, make_engine, sqlite_file, unpooled_engine
from edgefleet.db.migrate import Verdict, schema_state, upgrade, upgrade_async
from edgefleet.db.tables import Task
from edgefleet.errors import StorageError
from edgefleet.files import FileStore
from edgefleet.files.local import LocalFileStore
from edgefleet.files.s3 import S3FileStore, make_client, parse_s3_url
from edgefleet.files.signing import UrlSigner
from edgefleet.looplag import LoopLag
from edgefleet.mqtt.client import BrokerLink
from edgefleet.mqtt.limits import GatewayRate
from edgefleet.mqtt.nodes import NodeLinks
from edgefleet.mqtt.relay import GatewayRelay
from edgefleet.mqtt.router import InboundRouter
from edgefleet.protocol import topics
from edgefleet.secretbox import SecretBox
from edgefleet.services.accounts import AccountService
from edgefleet.services.audit import AuditService
from edgefleet.services.backup import EngineFactory
from edgefleet.services.broker_auth import BrokerAuthService
from edgefleet.services.egress import Egress
from edgefleet.services.engine import TaskEngine
from edgefleet.services.eventfeed import EventFeed
from edgefleet.services.eventlog import EventLog
from edgefleet.services.events import EventService, TaskEvents
from edgefleet.services.files import FileService, FirmwareService
from edgefleet.services.fleet import FleetService
from edgefleet.services.keys import KeyCache
from edgefleet.services.nodes import NodeLeases, NodeRegistry
from edgefleet.services.notifications import NotificationService
from edgefleet.services.pki import PkiService, broker_tls
from edgefleet.services.presence import PresenceMonitor, PresenceService
from edgefleet.services.remote import RemoteService
from edgefleet.services.tasks import TaskService
from edgefleet.settings import Settings
from edgefleet.workers import Workers

log = logging.getLogger(__name__)


@dataclass
class Messaging:
    """The server's side of the gateway protocol: broker link, relay, presence (its writer
    and its monitor), router.

    With broker nodes (``mqtt.nodes``), ``nodes`` holds the links to them and ``leases``
    (on the instances that ingest) the leases on their streams; ``link`` is then not
    started."""

    link: BrokerLink
    relay: GatewayRelay
    presence: PresenceService
    monitor: PresenceMonitor
    router: InboundRouter
    broker: EmbeddedMosquitto | None
    nodes: NodeLinks | None = None
    leases: NodeLeases | None = None
    running: bool = False

    def connected(self) -> bool:
        """The server can reach gateways: its broker link is up (with broker nodes: the
        publishing link of at least one node)."""
        if self.nodes is not None:
            return self.nodes.connected()
        return self.link.connected.is_set()


@dataclass
class Container:
    settings: Settings
    db: Database
    workers: Workers
    accounts: AccountService
    fleet: FleetService
    audit: AuditService
    messaging: Messaging
    keys: KeyCache
    broker_auth: BrokerAuthService
    node_registry: NodeRegistry
    pki: PkiService
    tasks: TaskService
    remote: RemoteService
    files: FileService
    firmware: FirmwareService
    events: EventService
    event_log: EventLog
    notifications: NotificationService
    task_events: TaskEvents
    loop_lag: LoopLag

    async def start_messaging(self) -> None:
        """Start the embedded broker (if configured) and every background loop, each a
        worker of ``workers`` (the only way a loop is started)."""
        m = self.messaging
        broker = m.broker
        await self.keys.load()  # every key decrypted once, in a worker thread
        if broker is not None:
            # the key cache's cycle with the broker (see the module docstring): the broker
            # follows key changes from here, its start writing every key loaded so far
            listeners = self.keys.listeners
            if broker.keys_changed not in listeners:  # once, however often restarted
                listeners.append(broker.keys_changed)
            await broker.start()
        start = self.workers.start
        start("gateway-keys", self.keys.run)
        start("loop-lag", self.loop_lag.run)
        if m.nodes is not None:
            m.nodes.start()
            if m.leases is not None:
                start("broker-leases", m.leases.run)
        else:
            start("broker-link", m.link.run)
        start("presence-writer", m.presence.run)
        if m.monitor.sweep_interval:
            start("presence-sweep", m.monitor.sweep)
        if m.monitor.heal_enabled:
            start("presence-heal", m.monitor.heal)
        start("task-engine", self.tasks.engine.run)
        start("task-results", self.tasks.engine.run_results)
        start("event-writer", self.events.run)
        start("event-retention", self.events.run_retention)
        start("file-expiry", self.files.run_expiry)
        start("webhook-dispatcher", self.notifications.run)
        start("webhook-retention", self.notifications.run_retention)
        m.running = True

    async def stop_messaging(self) -> None:
        """Stop every worker (and log those that failed while the server ran), then the
        embedded broker."""
        m = self.messaging
        await self.event_log.feed.close()  # ends the live streams
        await self.workers.stop()
        m.running = False
        await m.monitor.close()
        await m.router.close()
        await self.task_events.close()
        if m.broker is not None:
            await m.broker.stop()

    async def close(self) -> None:
        await self.stop_messaging()
        self.accounts.passwords.close()
        await self.db.dispose()


def build(settings: Settings, db: Database | None = None) -> Container:
    """Wire every service from ``settings``; tests may hand in a database already open."""
    datadir.prepare(settings, sqlite_file(settings.resolved_database_url))
    db = db or Database(make_engine(settings.resolved_database_url))
    box = SecretBox(settings.resolved_secret_key())
    workers = Workers()
    accounts = AccountService(
        db,
        settings.login,
        timedelta(seconds=settings.http.session_ttl_seconds),
        broker_token=settings.broker_token.get_secret_value(),
    )
    audit = AuditService(db)
    keys = KeyCache(db, box)
    broker_auth = BrokerAuthService(
        keys, settings.mqtt.server_username, settings.mqtt_server_password()
    )
    egress = Egress.for_networks(settings.events.webhook_allow_networks)
    notifications = NotificationService(db, box, settings.events, egress)
    events = EventService(
        db,
        settings.events,
        hooks=[notifications.queue_deliveries],
        listeners=[notifications.events_stored],
    )
    event_log = EventLog(db, EventFeed(db, events, workers=workers))  # the feed listens too
    task_events = TaskEvents(db, events)
    fleet = FleetService(
        db, box, credential_listeners=[keys.credentials_changed, task_events.devices]
    )
    pki = PkiService(db, box, fleet)
    files = _files(settings, db)
    firmware = FirmwareService(db, files)
    link = _LinkHandle()
    relay = GatewayRelay(link.publish)
    tasks = _tasks(db, relay, firmware, task_events)
    broker = _embedded_broker(settings, keys, pki, workers)
    messaging = _messaging(
        settings,
        db,
        workers,
        link,
        relay,
        tasks.engine,
        events if settings.events.ingest else None,
        broker,
    )
    remote = RemoteService(fleet, relay, read_properties=messaging.router.read_properties)
    loop_lag = LoopLag()
    return Container(
        settings=settings,
        db=db,
        workers=workers,
        accounts=accounts,
        fleet=fleet,
        audit=audit,
        messaging=messaging,
        keys=keys,
        broker_auth=broker_auth,
        node_registry=NodeRegistry(
            db,
            networks=settings.mqtt.allowed_node_networks,
            limit=settings.mqtt.max_registered_nodes,
        ),
        pki=pki,
        tasks=tasks,
        remote=remote,
        files=files,
        firmware=firmware,
        events=events,
        event_log=event_log,
        notifications=notifications,
        task_events=task_events,
        loop_lag=loop_lag,
    )


def _file_store(settings: Settings, signer: UrlSigner) -> FileStore:
    """``storage.url``: empty or ``file:///dir`` → a directory; ``s3://bucket/prefix`` → S3."""
    storage = settings.storage
    if storage.url.startswith("s3://"):
        bucket, prefix = parse_s3_url(storage.url)
        client = make_client(storage.s3_endpoint_url, storage.s3_region)
        return S3FileStore(client, bucket, prefix)
    return LocalFileStore(settings.files_dir, signer, settings.public_url)


def _files(settings: Settings, db: Database) -> FileService:
    """The file service over the configured store; download links signed with the secret key."""
    signer = UrlSigner(settings.resolved_secret_key())
    return FileService(db, _file_store(settings, signer), signer, settings.storage)


def _tasks(
    db: Database, relay: GatewayRelay, firmware: FirmwareService, task_events: TaskEvents
) -> TaskService:
    """The task engine and service; firmware tasks get a fresh download URL per dispatch, and
    the engine's committed changes become events."""

    async def resolve(task: Task) -> Any:
        assert task.firmware_id is not None
        data = dict(task.payload.get("data") or {})
        data["file"] = await firmware.dispatch_file(task.firmware_id)
        if task.meta.get("version"):
            data.setdefault("version", task.meta["version"])
        return data

    async def lookup(firmware_id: int) -> dict[str, Any]:
        row = await firmware.get(firmware_id)
        return {"version": row.version, "models": row.models}

    engine = TaskEngine(
        db,
        relay.send,
        resolve=resolve,
        history_observers=[task_events.history],
        task_observers=[task_events.task],
    )
    return TaskService(db, engine, firmware=lookup)


class _LinkHandle:
    """The broker link, for what is made before it: the relay and the router send through
    the link, and the link delivers into the router. ``_messaging`` sets ``link`` as soon as
    it made it, before ``build`` returns."""

    def __init__(self) -> None:
        self.link: BrokerLink | None = None

    def _made(self) -> BrokerLink:
        assert self.link is not None, "the broker link is made by _messaging"
        return self.link

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._made().publish(topic, payload)

    nodes: NodeLinks | None = None
    """With broker nodes: the links to them (a retained message is cleared on its node)."""

    async def clear_retained(self, topic: str, node: str | None = None) -> None:
        if self.nodes is not None and node is not None:
            await self.nodes.publish(node, topic, b"", retain=True)
        else:
            await self._made().publish(topic, b"", retain=True)


def _messaging(
    settings: Settings,
    db: Database,
    workers: Workers,
    handle: _LinkHandle,
    relay: GatewayRelay,
    tasks: TaskEngine,
    events: EventService | None,
    broker: EmbeddedMosquitto | None,
) -> Messaging:
    """The gateway side: presence, the inbound router and its presence monitor, the broker
    link. ``events``: where gateway events and status changes are stored (None on an
    instance that does not ingest them)."""
    mqtt = settings.mqtt
    presence = PresenceService(db)
    sweep = mqtt.presence_sweep_seconds
    if sweep and mqtt.shared_group:
        # this instance hears only its share of the stream, and its probes' answers may
        # reach another instance: its sweep would mark live gateways offline
        log.warning("presence sweep off: it needs every answer, and shared_group splits them")
        sweep = 0
    elif not settings.events.ingest:
        # the instances that store events sweep, so a gateway found gone gets its offline
        # event (and webhooks) too; one sweeper per fleet is enough
        sweep = 0
    rules = settings.events
    router = InboundRouter(
        presence,
        relay,
        rate=GatewayRate(rules.gateway_rate, rules.gateway_burst),
        alarm_period=rules.gateway_alarm_seconds,
        tasks=tasks,
        events=events,
        clear_retained=handle.clear_retained,
    )
    # the instances that store events heal presence, as they sweep: the status changes
    # they find reach the events table and webhooks
    monitor = PresenceMonitor(
        presence,
        router.probe,
        sweep_interval=sweep,
        heal=rules.ingest,
        workers=workers,
        tasks=tasks,
        events=events,
    )
    instance = mqtt.client_id or f"edgefleet-{socket.gethostname()}"
    link = BrokerLink(
        host=mqtt.server_host,
        port=mqtt.server_port,
        username=mqtt.server_username,
        password=settings.mqtt_server_password(),
        client_id=instance,
        clean_session=mqtt.clean_session,
        subscriptions=topics.server_subscriptions(mqtt.shared_group),
        handler=router,
        on_connect=monitor.connected,
    )
    # The broker link's cycle, closed here and nowhere else: the link delivers into the
    # router and tells the monitor it connected, while the monitor probes through the router
    # and watches the link, and the relay and the router send through the link.
    handle.link = link
    router.monitor = monitor
    monitor.link_up = link.connected
    if not mqtt.partitioned:
        return Messaging(link, relay, presence, monitor, router, broker)
    # Broker nodes (docs/scaling.md): the same cycle over a link per node; ``link`` above is
    # then not started. Each consumer link delivers into the router with its node's name.
    nodes = NodeLinks(
        instance=instance,
        username=mqtt.server_username,
        password=settings.mqtt_server_password(),
        workers=workers,
        consume=lambda name: functools.partial(router, node=name),
        answers=router.answers,
        dead=monitor.node_dead,
        on_consumer_connect=monitor.connected,
        grace=mqtt.node_grace_seconds,
        dns=mqtt.nodes_dns,
        registered=NodeRegistry(db, networks=mqtt.allowed_node_networks).live
        if mqtt.node_registration
        else None,
    )
    nodes.configure(mqtt.broker_nodes)
    handle.nodes = relay.nodes = nodes
    monitor.scope = lambda: nodes.consumed
    monitor.link_up = nodes.consumers_up
    leases = (
        NodeLeases(db, instance, lambda: nodes.names, gained=nodes.gained, lost=nodes.lost)
        if rules.ingest  # the others publish only
        else None
    )
    return Messaging(link, relay, presence, monitor, router, broker, nodes, leases)


def _embedded_broker(
    settings: Settings, keys: KeyCache, pki: PkiService, workers: Workers
) -> EmbeddedMosquitto | None:
    """The Mosquitto the server runs itself (``mqtt.embedded``), reading the key cache."""
    mqtt = settings.mqtt
    if not mqtt.embedded:
        return None
    return EmbeddedMosquitto(
        mqtt,
        settings.mqtt_server_password(),
        keys.psk_text,
        tls=lambda: broker_tls(pki, mqtt),
        crl=pki.crl_pem,
        record=settings.data_dir / "embedded-mosquitto.json",
        workers=workers,
    )


def backup_store(settings: Settings) -> FileStore:
    """The configured file store, for ``edgefleet backup`` and ``restore`` to read and write.

    Download links are never made there, so the local store gets a signer of its own: building
    the real one would create the data dir's key file, which restore may have to install.
    """
    return _file_store(settings, UrlSigner(b"edgefleet-backup: never signs a link"))


def backup_engine(settings: Settings) -> EngineFactory:
    """Engines on the configured database for backup and restore, each without a pool."""
    url = settings.resolved_database_url
    return lambda: unpooled_engine(url)


def migrate(settings: Settings) -> str:
    """Prepare the data directory and bring the schema up to date (``edgefleet migrate``);
    what was done, in a sentence (a newer schema that runs with this code is left as it is)."""
    datadir.prepare(settings, sqlite_file(settings.resolved_database_url))
    state = upgrade(settings.resolved_database_url)
    return state.explain() if state is not None else "database schema is up to date"


async def prepare_schema(container: Container, *, migrate: bool | None = None) -> None:
    """Migrate SQLite automatically (or when asked); otherwise refuse an outdated schema."""
    settings = container.settings
    if migrate is None:
        migrate = settings.is_sqlite
    if migrate:
        state = await upgrade_async(settings.resolved_database_url)
        if state is not None:
            log.warning("%s", state.explain())
        return
    state = await schema_state(container.db.engine)
    if state.verdict is Verdict.AHEAD_COMPATIBLE:
        log.warning("%s", state.explain())  # a rollback: the next release's schema
    elif state.verdict is not Verdict.CURRENT:
        raise StorageError(state.explain())
