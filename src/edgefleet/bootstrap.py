"""Composition root: the only place that turns Settings into concrete objects."""

from __future__ import annotations

import functools
import logging
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from edgefleet import datadir
from edgefleet.brokers.embedded import EmbeddedMosquitto
from edgefleet.db.engine import Database, make_engine, sqlite_file, unpooled_engine
from edgefleet.db.migrate import current_revision, head_revision, upgrade, upgrade_async
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
from edgefleet.services.nodes import NodeLeases
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
    pki: PkiService
    tasks: TaskService
    remote: RemoteService
    files: FileService
    firmware: FirmwareService
    events: EventService
    event_log: EventLog
    notifications: NotificationService
    task_events: TaskEvents
    loop_lag: LoopLag = field(default_factory=LoopLag)

    async def start_messaging(self) -> None:
        """Start the embedded broker (if configured) and every background loop, each a
        worker of ``workers`` (the only way a loop is started)."""
        m = self.messaging
        broker = m.broker
        await self.keys.load()  # every key decrypted once, in a worker thread
        if broker is not None:
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


def _messaging(
    settings: Settings, db: Database, keys: KeyCache, pki: PkiService, workers: Workers
) -> Messaging:
    mqtt = settings.mqtt
    password = settings.mqtt_server_password()
    presence = PresenceService(db)
    holder: dict[str, BrokerLink] = {}
    instance = mqtt.client_id or f"edgefleet-{socket.gethostname()}"

    async def publish(topic: str, payload: bytes) -> None:
        await holder["link"].publish(topic, payload)

    relay = GatewayRelay(publish)
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
    events = settings.events
    # the instances that store events heal presence, as they sweep: the status changes
    # they find reach the events table and webhooks
    router = InboundRouter(
        presence,
        relay,
        rate=GatewayRate(events.gateway_rate, events.gateway_burst),
        alarm_period=events.gateway_alarm_seconds,
    )
    monitor = PresenceMonitor(
        presence, router.probe, sweep_interval=sweep, heal=events.ingest, workers=workers
    )
    router.monitor = monitor
    link = BrokerLink(
        host=mqtt.server_host,
        port=mqtt.server_port,
        username=mqtt.server_username,
        password=password,
        client_id=instance,
        clean_session=mqtt.clean_session,
        subscriptions=topics.server_subscriptions(mqtt.shared_group),
        handler=router,
        on_connect=monitor.connected,
    )
    holder["link"] = link
    monitor.link_up = link.connected

    nodes: NodeLinks | None = None
    leases: NodeLeases | None = None
    if mqtt.partitioned:
        nodes = NodeLinks(
            instance=instance,
            username=mqtt.server_username,
            password=password,
            workers=workers,
            consume=lambda name: functools.partial(router, node=name),
            answers=router.answers,
            dead=monitor.node_dead,
            on_consumer_connect=monitor.connected,
            grace=mqtt.node_grace_seconds,
            dns=mqtt.nodes_dns,
        )
        nodes.configure(mqtt.broker_nodes)
        relay.nodes = nodes
        monitor.scope = lambda: nodes.consumed if nodes is not None else []
        monitor.link_up = nodes.consumers_up
        if events.ingest:  # the others publish only
            leases = NodeLeases(
                db,
                instance,
                lambda: nodes.names if nodes is not None else [],
                gained=nodes.gained,
                lost=nodes.lost,
            )

    async def clear_retained(topic: str, node: str | None) -> None:
        if nodes is not None and node is not None:
            await nodes.publish(node, topic, b"", retain=True)
        else:
            await link.publish(topic, b"", retain=True)

    router.clear_retained = clear_retained
    broker = (
        EmbeddedMosquitto(
            mqtt,
            password,
            keys.psk_text,
            tls=lambda: broker_tls(pki, mqtt),
            crl=pki.crl_pem,
            record=settings.data_dir / "embedded-mosquitto.json",
            workers=workers,
        )
        if mqtt.embedded
        else None
    )
    return Messaging(link, relay, presence, monitor, router, broker, nodes, leases)


def _file_store(settings: Settings, signer: UrlSigner) -> FileStore:
    """``storage.url``: empty or ``file:///dir`` → a directory; ``s3://bucket/prefix`` → S3."""
    storage = settings.storage
    if storage.url.startswith("s3://"):
        bucket, prefix = parse_s3_url(storage.url)
        client = make_client(storage.s3_endpoint_url, storage.s3_region)
        return S3FileStore(client, bucket, prefix)
    return LocalFileStore(settings.files_dir, signer, settings.public_url)


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


def _tasks(db: Database, messaging: Messaging, firmware: FirmwareService) -> TaskService:
    """The task engine and service; firmware tasks get a fresh download URL per dispatch."""

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

    engine = TaskEngine(db, messaging.relay.send, resolve=resolve)
    messaging.router.tasks = engine
    messaging.monitor.tasks = engine
    return TaskService(db, engine, firmware=lookup)


def build(settings: Settings, db: Database | None = None) -> Container:
    """Wire every service from ``settings``; tests may hand in a database already open."""
    datadir.prepare(settings, sqlite_file(settings.resolved_database_url))
    db = db or Database(make_engine(settings.resolved_database_url))
    box = SecretBox(settings.resolved_secret_key())
    fleet = FleetService(db, box)
    pki = PkiService(db, box, fleet)
    keys = KeyCache(db, box)
    fleet.credential_listeners.append(keys.credentials_changed)
    broker_auth = BrokerAuthService(
        keys, settings.mqtt.server_username, settings.mqtt_server_password()
    )
    workers = Workers()
    messaging = _messaging(settings, db, keys, pki, workers)
    signer = UrlSigner(settings.resolved_secret_key())
    files = FileService(db, _file_store(settings, signer), signer, settings.storage)
    firmware = FirmwareService(db, files)
    events = EventService(db, settings.events)
    if settings.events.ingest:
        messaging.router.events = events
        messaging.monitor.events = events
    egress = Egress.for_networks(settings.events.webhook_allow_networks)
    notifications = NotificationService(db, box, settings.events, egress)
    events.add_hook(notifications.queue_deliveries)
    events.add_listener(notifications.events_stored)
    tasks = _tasks(db, messaging, firmware)
    task_events = TaskEvents(db, events)
    tasks.engine.history_observers.append(task_events.history)
    tasks.engine.task_observers.append(task_events.task)
    fleet.credential_listeners.append(task_events.devices)
    return Container(
        settings=settings,
        db=db,
        workers=workers,
        accounts=AccountService(
            db, settings.login, timedelta(seconds=settings.http.session_ttl_seconds)
        ),
        fleet=fleet,
        audit=AuditService(db),
        messaging=messaging,
        keys=keys,
        broker_auth=broker_auth,
        pki=pki,
        tasks=tasks,
        remote=RemoteService(
            fleet, messaging.relay, read_properties=messaging.router.read_properties
        ),
        files=files,
        firmware=firmware,
        events=events,
        event_log=EventLog(db, EventFeed(db, events, workers=workers)),
        notifications=notifications,
        task_events=task_events,
    )


def migrate(settings: Settings) -> None:
    """Prepare the data directory and bring the schema up to date (``edgefleet migrate``)."""
    datadir.prepare(settings, sqlite_file(settings.resolved_database_url))
    upgrade(settings.resolved_database_url)


async def prepare_schema(container: Container, *, migrate: bool | None = None) -> None:
    """Migrate SQLite automatically (or when asked); otherwise refuse an outdated schema."""
    settings = container.settings
    if migrate is None:
        migrate = settings.is_sqlite
    if migrate:
        await upgrade_async(settings.resolved_database_url)
        return
    current = await current_revision(container.db.engine)
    if current != head_revision():
        raise StorageError(
            f"database schema is at {current or 'nothing'}, this edgefleet needs "
            f"{head_revision()}: run `edgefleet migrate` first"
        )
