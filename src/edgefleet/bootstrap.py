"""Composition root: the only place that turns Settings into concrete objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from edgefleet.db.engine import Database, make_engine
from edgefleet.db.migrate import current_revision, head_revision, upgrade_async
from edgefleet.errors import StorageError
from edgefleet.secretbox import SecretBox
from edgefleet.services.accounts import AccountService
from edgefleet.services.audit import AuditService
from edgefleet.services.fleet import FleetService
from edgefleet.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    db: Database
    accounts: AccountService
    fleet: FleetService
    audit: AuditService

    async def close(self) -> None:
        await self.db.dispose()


def build(settings: Settings, db: Database | None = None) -> Container:
    """Wire every service from ``settings``; tests may hand in a database already open."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = db or Database(make_engine(settings.resolved_database_url))
    box = SecretBox(settings.resolved_secret_key())
    return Container(
        settings=settings,
        db=db,
        accounts=AccountService(
            db, settings.login, timedelta(seconds=settings.http.session_ttl_seconds)
        ),
        fleet=FleetService(db, box),
        audit=AuditService(db),
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
