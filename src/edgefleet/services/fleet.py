"""Devices and groups: registration, inventory, queries and group membership."""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.devices import DeviceListReads, DeviceRepo, device_presence
from edgefleet.db.repos.groups import GroupRepo
from edgefleet.db.repos.keys import KeyChangeRepo
from edgefleet.db.tables import Device, Execution, Group, Task
from edgefleet.domain.devicefilter import DeviceFilter, DeviceOrder
from edgefleet.domain.devices import ConnectionStatus, check_tag, mac_key, new_psk
from edgefleet.domain.query import parse
from edgefleet.errors import (
    ConflictError,
    DeviceNotFoundError,
    DuplicateError,
    GroupBusyError,
    GroupNotFoundError,
    SelectionChangedError,
    ValidationError,
)
from edgefleet.secretbox import SecretBox

log = logging.getLogger(__name__)

FLEET_COUNT_TTL = 1.0
"""Seconds a count of the whole fleet is kept for the device list (``FleetService._count``)."""
NO_FILTER = DeviceFilter()

MAX_TAGS = 50
MAX_ATTRIBUTES = 100


@dataclass(frozen=True)
class Registration:
    display_name: str
    mac: str
    serial_number: str = ""
    description: str = ""
    icc_id: str = ""
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceView:
    device: Device
    tags: list[str]


class DeviceRecord(Protocol):
    """What the device list shows of a device: a ``Device``, or a row of the list's columns
    (``db/repos/devices.py`` ``LIST_COLUMNS``)."""

    @property
    def uuid(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def serial_number(self) -> str: ...
    @property
    def icc_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def connection_status(self) -> str: ...
    @property
    def connection_changed_at(self) -> datetime: ...
    @property
    def properties(self) -> dict[str, Any]: ...
    @property
    def properties_updated_at(self) -> datetime | None: ...
    @property
    def group_id(self) -> int | None: ...
    @property
    def attributes(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ListedDevice:
    record: DeviceRecord
    tags: list[str]


@dataclass(frozen=True)
class DeviceRows:
    """A page of the device list as the API shows it (``FleetService.device_rows``)."""

    total: int
    items: list[ListedDevice]


@dataclass(frozen=True)
class DevicePage:
    total: int
    items: list[DeviceView]


@dataclass(frozen=True)
class GroupView:
    group: Group
    devices: list[DeviceView]
    status_counts: dict[str, int]
    task_counts: dict[str, int]
    task: Task | None
    """The group's newest task (its ``taskUUID``), whose executions are ``task_records``."""
    task_records: list[Execution]


@dataclass(frozen=True)
class Selection:
    """Gateways an operator picked from a list, with the fleet query that list showed. A bulk
    change goes ahead only while every one of them still matches the query and, when
    ``exact`` (the operator picked "every gateway that matches"), while they are all it
    matches; otherwise it is refused (``SelectionChangedError``) and nothing changes."""

    devices: Sequence[str]
    query: str = ""
    exact: bool = False


async def check_selection(repo: DeviceRepo, selection: Selection) -> None:
    """Raise ``SelectionChangedError`` if ``selection`` no longer matches its query (a
    gateway deleted since counts as no longer matching). Runs in the caller's transaction."""
    wanted = list(dict.fromkeys(selection.devices))
    text = selection.query.strip()
    node = parse(text) if text else None
    if node is not None:
        still = await repo.matching(wanted, node)
    else:
        still = {d.uuid for d in await repo.get_many(wanted)}
    gone = [u for u in wanted if u not in still]
    added = 0
    if selection.exact:
        added = max(0, await repo.count(DeviceFilter(query=node)) - len(still))
    if gone or added:
        raise SelectionChangedError(text, gone, added)


def _check_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(f"at most {MAX_ATTRIBUTES} attributes per device")
    for key in attributes:
        if not key or len(key) > 64:
            raise ValidationError(f"attribute name {key!r} must have 1-64 characters")
    return attributes


def _check_tags(tags: Sequence[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags per device")
    return [check_tag(t) for t in tags]


@dataclass(frozen=True)
class CredentialChange:
    """What one committed registration, key rotation or deletion changed."""

    seq: int
    """Its position in the key change log (``key_changes``): every row it wrote is ≤ this."""
    keys: dict[str, str]
    """``uuid → psk`` (hex) of the gateways registered or given a new key."""
    registered: list[str] = field(default_factory=list)
    """Of those, the new gateways."""
    deleted: list[str] = field(default_factory=list)


CredentialListener = Callable[[CredentialChange], None]
"""Called on the event loop after each committed change, before the call that made it
returns (so the server's key cache knows a new key before its gateway is told it)."""


class FleetService:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        clock: Clock = utcnow,
        *,
        credential_listeners: Sequence[CredentialListener] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.box = box
        self.clock = clock
        self.credential_listeners = list(credential_listeners)
        self.monotonic = monotonic
        self._fleet_count: tuple[float, int] | None = None  # (read at, number of gateways)
        self._fleet_changes = 0  # registrations and deletions made here: a count read
        # across one is not kept

    def _fleet_changed(self) -> None:
        self._fleet_changes += 1
        self._fleet_count = None

    async def _count(self, reads: DeviceListReads, f: DeviceFilter) -> int | None:
        """The number of gateways when ``f`` is no filter, from a count read at most
        ``FLEET_COUNT_TTL`` ago (a registration or deletion here drops it at once; another
        server's shows within the TTL); None for a filter (the page's read counts it: a
        filter's count moves with the gateways' states, which change elsewhere)."""
        if f != NO_FILTER:
            return None
        now = self.monotonic()
        if self._fleet_count is not None and now - self._fleet_count[0] < FLEET_COUNT_TTL:
            return self._fleet_count[1]
        changes = self._fleet_changes
        n = await reads.count(f)
        if changes == self._fleet_changes:
            self._fleet_count = (now, n)
        return n

    def _credentials_changed(self, change: CredentialChange) -> None:
        for listener in self.credential_listeners:
            listener(change)

    # --- devices ---------------------------------------------------------------------

    def _new_device(self, reg: Registration) -> tuple[Device, list[str], str]:
        key = mac_key(reg.mac)
        tags = _check_tags(reg.tags)
        attributes = _check_attributes(reg.attributes)
        psk, now = new_psk(), self.clock()
        device = Device(
            uuid=str(uuidlib.uuid4()),
            display_name=reg.display_name,
            mac=reg.mac.strip(),
            mac_key=key,
            serial_number=reg.serial_number,
            description=reg.description,
            icc_id=reg.icc_id,
            psk_encrypted=self.box.seal(psk),
            connection_status=ConnectionStatus.CREATED.value,
            connection_changed_at=now,
            properties={},
            model_name="",
            software_version="",
            software_version_key="",
            default_route="",
            alias_name="",
            attributes=attributes,
            group_id=None,
            created_at=now,
            updated_at=now,
        )
        return device, tags, psk

    async def register_device(self, reg: Registration) -> tuple[DeviceView, str]:
        """Register a gateway: a new uuid and PSK; the PSK is returned here only."""
        device, tags, psk = self._new_device(reg)
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            if await repo.exists_mac(device.mac_key):
                raise DuplicateError("device", "mac", reg.mac)
            await repo.add(device, tags)
            seq = await KeyChangeRepo(s).record([device.uuid], device.created_at)
        self._fleet_changed()
        log.info("device registered: %s mac=%s", device.uuid, device.mac_key)
        self._credentials_changed(CredentialChange(seq, {device.uuid: psk}, [device.uuid]))
        return DeviceView(device, sorted(set(tags))), psk

    async def register_many(self, regs: Sequence[Registration]) -> list[tuple[DeviceView, str]]:
        """Register many gateways in one transaction: all or none (a MAC already registered,
        or given twice, refuses the batch)."""
        made = [self._new_device(r) for r in regs]
        keys = [d.mac_key for d, _, _ in made]
        if len(set(keys)) != len(keys):
            raise ValidationError("the same mac appears twice in the batch")
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            taken = await repo.credentials_by_mac(keys)
            if taken:
                raise DuplicateError("device", "mac", next(iter(taken)))
            await repo.add_many([(d, t) for d, t, _ in made])
            seq = await KeyChangeRepo(s).record([d.uuid for d, _, _ in made], self.clock())
        self._fleet_changed()
        log.info("devices registered: %d", len(made))
        uuids = [d.uuid for d, _, _ in made]
        self._credentials_changed(CredentialChange(seq, {d.uuid: psk for d, _, psk in made}, uuids))
        return [(DeviceView(d, sorted(set(t))), psk) for d, t, psk in made]

    async def list_devices(
        self, f: DeviceFilter, *, offset: int, limit: int, order: DeviceOrder = DeviceOrder()
    ) -> DevicePage:
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            total, rows = await repo.page(f, offset=offset, limit=limit, order=order)
            tags = await repo.tags_of([d.uuid for d in rows])
        return DevicePage(total, [DeviceView(d, tags.get(d.uuid, [])) for d in rows])

    async def device_rows(
        self, f: DeviceFilter, *, offset: int, limit: int, order: DeviceOrder = DeviceOrder()
    ) -> DeviceRows:
        """``list_devices`` for the API's list: the list's columns as rows, read outside a
        transaction (the count and the page with its tags, no BEGIN or COMMIT; the count of the
        whole fleet kept briefly, see ``_count``)."""
        async with self.db.autocommit() as conn:
            reads = DeviceListReads(conn)
            total = await self._count(reads, f) if order.key != "group" else None
            total, rows = await reads.page(f, offset=offset, limit=limit, order=order, total=total)
        return DeviceRows(total, [ListedDevice(r, r.tags or []) for r in rows])

    async def breakdown(self) -> dict[str, list[tuple[str, int]]]:
        """Gateways by connection status, by model and by firmware version."""
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            return {k: await repo.breakdown(k) for k in ("status", "model", "firmware")}

    async def get_device(self, uuid: str) -> DeviceView:
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            device = await repo.get(uuid)
            if device is None:
                raise DeviceNotFoundError(uuid)
            tags = await repo.tags_of([uuid])
        return DeviceView(device, tags.get(uuid, []))

    async def connection_status(self, uuid: str) -> str:
        """The stored connection status of a device (``DeviceNotFoundError``): one column,
        for the paths that ask nothing else."""
        async with self.db.session() as s:
            status = await DeviceRepo(s).connection_status(uuid)
        if status is None:
            raise DeviceNotFoundError(uuid)
        return status

    async def presence(self, uuid: str) -> tuple[str, str | None]:
        """``(connection status, broker node)`` of a device (``DeviceNotFoundError``), in one
        query: what a request relayed to the gateway needs."""
        async with self.db.autocommit() as conn:  # one round trip, no BEGIN/COMMIT
            found = await device_presence(conn, uuid)
        if found is None:
            raise DeviceNotFoundError(uuid)
        return found

    async def update_device(
        self,
        uuid: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> DeviceView:
        checked_tags = _check_tags(tags) if tags is not None else None
        if attributes is not None:
            _check_attributes(attributes)
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            device = await repo.get(uuid)
            if device is None:
                raise DeviceNotFoundError(uuid)
            if display_name is not None:
                device.display_name = display_name
            if description is not None:
                device.description = description
            if attributes is not None:
                device.attributes = attributes
            device.updated_at = self.clock()
            if checked_tags is not None:
                await repo.set_tags(uuid, checked_tags)
            current = await repo.tags_of([uuid])
        return DeviceView(device, current.get(uuid, []))

    async def update_devices(
        self,
        selection: Selection,
        *,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        attributes: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> list[str]:
        """Change many gateways at once, all or none: tags added and removed, attributes
        merged (a None value removes the key, as in a JSON merge patch), the description
        replaced. Refused when ``selection`` no longer matches its query or names an unknown
        gateway. Returns the uuids changed."""
        add, remove = _check_tags(add_tags), _check_tags(remove_tags)
        wanted = list(dict.fromkeys(selection.devices))
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            await check_selection(repo, selection)
            devices = await repo.get_many(wanted)
            missing = sorted(set(wanted) - {d.uuid for d in devices})
            if missing:
                raise DeviceNotFoundError(", ".join(missing))
            tags = await repo.tags_of(wanted)
            now = self.clock()
            for d in devices:
                if attributes:
                    merged = dict(d.attributes or {})
                    for key, value in attributes.items():
                        if value is None:
                            merged.pop(key, None)
                        else:
                            merged[key] = value
                    d.attributes = _check_attributes(merged)
                if description is not None:
                    d.description = description
                if add or remove:
                    current = (set(tags.get(d.uuid, [])) | set(add)) - set(remove)
                    await repo.set_tags(d.uuid, _check_tags(sorted(current)))
                d.updated_at = now
        return wanted

    async def delete_devices(
        self, uuids: Sequence[str], *, selection: Selection | None = None
    ) -> list[str]:
        """Deregister devices, all or none: an unknown uuid refuses the whole request, and so
        does a ``selection`` (of these uuids) that no longer matches its query."""
        wanted = list(dict.fromkeys(uuids))
        async with self.db.session() as s:
            repo = DeviceRepo(s)
            if selection is not None:
                await check_selection(repo, selection)
            found = {d.uuid for d in await repo.get_many(wanted)}
            missing = [u for u in wanted if u not in found]
            if missing:
                raise DeviceNotFoundError(", ".join(missing))
            deleted = await repo.delete(wanted, self.clock())
            seq = await KeyChangeRepo(s).record(deleted, self.clock())
        self._fleet_changed()
        log.info("devices deregistered: %d", len(deleted))
        self._credentials_changed(CredentialChange(seq, {}, deleted=deleted))
        return deleted

    async def rotate_psk(self, uuid: str) -> str:
        """Give a gateway a new key; the old one stops working at once (brokers close its
        session). The new key is returned here only."""
        psk, now = new_psk(), self.clock()
        async with self.db.session() as s:
            device = await DeviceRepo(s).get(uuid)
            if device is None:
                raise DeviceNotFoundError(uuid)
            device.psk_encrypted = self.box.seal(psk)
            device.updated_at = now
            await s.flush()
            seq = await KeyChangeRepo(s).record([uuid], now)
        log.info("device key replaced: %s", uuid)
        self._credentials_changed(CredentialChange(seq, {uuid: psk}))
        return psk

    async def all_psks(self) -> list[tuple[str, str]]:
        """``(uuid, psk)`` of every device, for the broker's PSK store."""
        async with self.db.session() as s:
            sealed = await DeviceRepo(s).credentials()
        return [(uuid, self.box.open(p)) for uuid, p in sealed]

    async def credentials_by_mac(self, mac_keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``mac_key → (uuid, psk)`` of the registered devices among ``mac_keys``."""
        async with self.db.session() as s:
            sealed = await DeviceRepo(s).credentials_by_mac(mac_keys)
        return {k: (u, self.box.open(p)) for k, (u, p) in sealed.items()}

    async def device_psk(self, uuid: str) -> str:
        async with self.db.session() as s:
            device = await DeviceRepo(s).get(uuid)
        if device is None:
            raise DeviceNotFoundError(uuid)
        return self.box.open(device.psk_encrypted)

    # --- groups ----------------------------------------------------------------------

    async def create_group(self, name: str, description: str = "") -> GroupView:
        name = name.strip()
        if not name:
            raise ValidationError("a group needs a name")
        now = self.clock()
        group = Group(name=name, description=description, created_at=now, updated_at=now)
        async with self.db.session() as s:
            await GroupRepo(s).add(group)
        return (await self.group_views([group.id]))[0]

    async def uuids_named(self, name: str, limit: int = 100) -> list[str]:
        """Gateways named ``name`` (any case), else whose name contains it: at most
        ``limit`` + 1."""
        async with self.db.session() as s:
            return await DeviceRepo(s).uuids_named(name, limit)

    async def group_names(self, ids: set[int]) -> dict[int, str]:
        """``{id: name}`` of the groups among ``ids`` that exist."""
        async with self.db.session() as s:
            return {g.id: g.name for g in await GroupRepo(s).get_many(sorted(ids))}

    async def display_names(self, uuids: Sequence[str]) -> dict[str, str | None]:
        """``{uuid: display name}`` of the gateways among ``uuids`` that exist."""
        async with self.db.session() as s:
            return await DeviceRepo(s).display_names(uuids)

    async def groups_by_id(self, ids: Sequence[int]) -> dict[int, Group]:
        """The groups among ``ids`` that exist, without their members."""
        async with self.db.session() as s:
            return {g.id: g for g in await GroupRepo(s).get_many(sorted(set(ids)))}

    async def group_rows(self, *, offset: int, limit: int) -> tuple[int, list[Group]]:
        """A page of groups (by id) without their members, and how many there are."""
        async with self.db.session() as s:
            return await GroupRepo(s).page(offset=offset, limit=limit)

    async def list_groups(self, *, offset: int, limit: int) -> tuple[int, list[GroupView]]:
        async with self.db.session() as s:
            total, groups = await GroupRepo(s).page(offset=offset, limit=limit)
        return total, await self.group_views([g.id for g in groups])

    async def get_group(self, group_id: int) -> GroupView:
        views = await self.group_views([group_id])
        if not views:
            raise GroupNotFoundError(group_id)
        return views[0]

    async def group_views(self, ids: Sequence[int]) -> list[GroupView]:
        async with self.db.session() as s:
            grepo, drepo = GroupRepo(s), DeviceRepo(s)
            groups = {g.id: g for g in await grepo.get_many(ids)}
            members = await drepo.in_groups(list(groups))
            tags = await drepo.tags_of([d.uuid for ds in members.values() for d in ds])
            statuses = await drepo.status_counts(list(groups))
            task_counts = await grepo.task_counts(list(groups))
            latest = await grepo.latest_tasks(list(groups))
        views = []
        for gid in ids:
            group = groups.get(gid)
            if group is None:
                continue
            task, records = latest.get(gid, (None, []))
            views.append(
                GroupView(
                    group=group,
                    devices=[DeviceView(d, tags.get(d.uuid, [])) for d in members.get(gid, [])],
                    status_counts=statuses.get(gid, {}),
                    task_counts=task_counts.get(gid, {}),
                    task=task,
                    task_records=records,
                )
            )
        return views

    async def update_group(
        self, group_id: int, *, name: str | None = None, description: str | None = None
    ) -> GroupView:
        async with self.db.session() as s:
            repo = GroupRepo(s)
            group = await repo.get(group_id)
            if group is None:
                raise GroupNotFoundError(group_id)
            new_name = group.name
            if name is not None:
                if not name.strip():
                    raise ValidationError("a group needs a name")
                new_name = group.name = name.strip()
            if description is not None:
                group.description = description
            group.updated_at = self.clock()
            try:
                await repo.flush_rename()
            except DuplicateError as exc:
                # not group.name: the failed flush expired the row, and reloading it now fails
                raise DuplicateError("group", "name", new_name) from exc
        return await self.get_group(group_id)

    async def delete_groups(self, ids: Sequence[int]) -> None:
        """Delete groups, all or none; refused while any has an unfinished task."""
        wanted = list(dict.fromkeys(ids))
        async with self.db.session() as s:
            repo = GroupRepo(s)
            found = {g.id for g in await repo.get_many(wanted)}
            missing = [i for i in wanted if i not in found]
            if missing:
                raise GroupNotFoundError(", ".join(str(i) for i in missing))
            busy = await repo.busy(wanted)
            if busy:
                raise GroupBusyError(busy[0])
            await repo.delete(wanted)

    async def group_device_uuids(self, group_id: int) -> list[str]:
        async with self.db.session() as s:
            if await GroupRepo(s).get(group_id) is None:
                raise GroupNotFoundError(group_id)
            return await DeviceRepo(s).uuids(DeviceFilter(group_id=group_id))

    async def add_to_group(
        self, group_id: int, uuids: Sequence[str], *, selection: Selection | None = None
    ) -> list[str]:
        """Attach devices; one group per device, so a device in another group is refused,
        and so is a ``selection`` that no longer matches its query."""
        wanted = list(dict.fromkeys(uuids))
        async with self.db.session() as s:
            grepo, drepo = GroupRepo(s), DeviceRepo(s)
            if await grepo.get(group_id, for_update=True) is None:
                raise GroupNotFoundError(group_id)
            if selection is not None:
                await check_selection(drepo, selection)
            devices = {d.uuid: d for d in await drepo.get_many(wanted)}
            missing = [u for u in wanted if u not in devices]
            if missing:
                raise DeviceNotFoundError(", ".join(missing))
            elsewhere = [u for u, d in devices.items() if d.group_id not in (None, group_id)]
            if elsewhere:
                raise ConflictError(
                    "a device can be in one group only; already in another group: "
                    + ", ".join(elsewhere)
                )
            await drepo.set_group(wanted, group_id, self.clock())
            return await drepo.uuids(DeviceFilter(group_id=group_id))

    async def remove_from_group(self, group_id: int, uuids: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(uuids))
        async with self.db.session() as s:
            grepo, drepo = GroupRepo(s), DeviceRepo(s)
            if await grepo.get(group_id, for_update=True) is None:
                raise GroupNotFoundError(group_id)
            devices = await drepo.get_many(wanted)
            not_members = [
                u for u in wanted if u not in {d.uuid for d in devices if d.group_id == group_id}
            ]
            if not_members:
                raise ValidationError("not in this group: " + ", ".join(not_members))
            await drepo.set_group(wanted, None, self.clock())
            return await drepo.uuids(DeviceFilter(group_id=group_id))
