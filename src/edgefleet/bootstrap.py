"""Composition root: the only place that turns Settings into concrete objects."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import current_revision, head_revision, upgrade_async
from edgefleet.errors import StorageError
from edgefleet.mqtt import topics
from edgefleet.mqtt.client import BrokerLink
from edgefleet.mqtt.embedded import EmbeddedMosquitto
from edgefleet.mqtt.relay import GatewayRelay
from edgefleet.mqtt.router import InboundRouter
from edgefleet.secretbox import SecretBox
from edgefleet.services.accounts import AccountService
from edgefleet.services.audit import AuditService
from edgefleet.services.broker_auth import BrokerAuthService
from edgefleet.services.fleet import FleetService
from edgefleet.services.pki import PkiService, broker_tls
from edgefleet.services.presence import PresenceService
from edgefleet.services.remote import RemoteService
from edgefleet.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Messaging:
    """The server's side of the gateway protocol: broker link, relay, presence, router."""

    link: BrokerLink
    relay: GatewayRelay
    presence: PresenceService
    router: InboundRouter
    broker: EmbeddedMosquitto | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class Container:
    settings: Settings
    db: Database
    accounts: AccountService
    fleet: FleetService
    audit: AuditService
    messaging: Messaging
    broker_auth: BrokerAuthService
    pki: PkiService
    remote: RemoteService

    async def start_messaging(self) -> None:
        """Start the embedded broker (if configured), the broker link and the presence writer."""
        m = self.messaging
        broker = m.broker
        if broker is not None:
            await broker.start()
            listeners = self.fleet.credential_listeners
            if broker.credentials_changed not in listeners:  # once, however often restarted
                listeners.append(broker.credentials_changed)
        m.tasks = [
            asyncio.create_task(m.link.run(), name="broker-link"),
            asyncio.create_task(m.presence.run(), name="presence-writer"),
        ]

    async def stop_messaging(self) -> None:
        m = self.messaging
        for task in m.tasks:
            task.cancel()
        await asyncio.gather(*m.tasks, return_exceptions=True)
        m.tasks = []
        await m.router.close()
        if m.broker is not None:
            await m.broker.stop()

    async def close(self) -> None:
        await self.stop_messaging()
        await self.db.dispose()


def _messaging(settings: Settings, db: Database, fleet: FleetService, pki: PkiService) -> Messaging:
    mqtt = settings.mqtt
    password = settings.mqtt_server_password()
    presence = PresenceService(db)
    holder: dict[str, BrokerLink] = {}

    async def publish(topic: str, payload: bytes) -> None:
        await holder["link"].publish(topic, payload)

    relay = GatewayRelay(publish)
    router = InboundRouter(presence, relay)
    link = BrokerLink(
        host=mqtt.server_host,
        port=mqtt.server_port,
        username=mqtt.server_username,
        password=password,
        client_id=mqtt.client_id or f"edgefleet-{socket.gethostname()}",
        subscriptions=topics.SERVER_SUBSCRIPTIONS,
        handler=router,
        on_connect=router.connected,
    )
    holder["link"] = link
    broker = (
        EmbeddedMosquitto(
            mqtt,
            password,
            fleet.all_psks,
            fleet.credentials_fingerprint,
            tls=lambda: broker_tls(pki, mqtt),
            crl=pki.crl_pem,
            record=settings.data_dir / "embedded-mosquitto.json",
        )
        if mqtt.embedded
        else None
    )
    return Messaging(link, relay, presence, router, broker)


def build(settings: Settings, db: Database | None = None) -> Container:
    """Wire every service from ``settings``; tests may hand in a database already open."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = db or Database(make_engine(settings.resolved_database_url))
    box = SecretBox(settings.resolved_secret_key())
    fleet = FleetService(db, box)
    pki = PkiService(db, box, fleet)
    broker_auth = BrokerAuthService(
        fleet, settings.mqtt.server_username, settings.mqtt_server_password()
    )
    fleet.credential_listeners.append(lambda _new, deleted: broker_auth.forget(deleted))
    messaging = _messaging(settings, db, fleet, pki)
    return Container(
        settings=settings,
        db=db,
        accounts=AccountService(
            db, settings.login, timedelta(seconds=settings.http.session_ttl_seconds)
        ),
        fleet=fleet,
        audit=AuditService(db),
        messaging=messaging,
        broker_auth=broker_auth,
        pki=pki,
        remote=RemoteService(fleet, messaging.relay),
    )


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
