"""Devices and their tags."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import operators

from edgefleet.db.fleetquery import to_clause
from edgefleet.db.tables import Device, DeviceCertificate, DeviceTag, Group
from edgefleet.domain.devicefilter import DeviceFilter, DeviceOrder
from edgefleet.domain.devices import indexed_properties
from edgefleet.domain.query import Node
from edgefleet.errors import DuplicateError

PARTIAL_COLUMNS: dict[str, Any] = {
    "uuid": Device.uuid,
    "mac": Device.mac,
    "displayName": Device.display_name,
    "serialNumber": Device.serial_number,
    "defaultRoute": Device.default_route,
    "softwareVersion": Device.software_version,
}
"""domain/devices.py ``PARTIAL_KEYS`` → columns."""


SORT_COLUMNS: dict[str, Any] = {
    "name": Device.display_name,
    "status": Device.connection_status,
    "since": Device.connection_changed_at,
    "mac": Device.mac_key,
    "model": Device.model_name,
    "firmware": Device.software_version_key,
    "created": Device.created_at,
}
"""Sort keys (domain/devices.py ``SORT_KEYS``) → columns; each has an index on (column, uuid)
(``mac_key`` is unique alone), so a page of any order is an index scan, not a sort of the
fleet. ``group`` sorts by the group's name, gateways without a group last: read group by
group (``DeviceRepo._page_by_group``), each from the index on (group_id, uuid)."""


def order_clauses(order: DeviceOrder) -> list[Any]:
    """The ORDER BY of a gateway list in ``order``."""

    def way(col: Any) -> Any:
        return col.desc() if order.descending else col.asc()

    if order.key == "group":
        name = Group.name.is_(None)  # no group: last in both directions
        return [name, way(Group.name), way(Device.uuid)]
    col = SORT_COLUMNS[order.key]
    if order.key == "mac":
        return [way(col)]
    return [way(col), way(Device.uuid)]


def _conditions(f: DeviceFilter) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if f.uuid is not None:
        cond.append(Device.uuid == f.uuid)
    if f.mac_key is not None:
        cond.append(Device.mac_key == f.mac_key)
    if f.serial_number is not None:
        cond.append(Device.serial_number == f.serial_number)
    for key, value in f.partial.items():
        cond.append(func.lower(PARTIAL_COLUMNS[key]).contains(value.lower(), autoescape=True))
    if f.status is not None:
        cond.append(Device.connection_status == f.status)
    if f.tag is not None:
        cond.append(
            select(DeviceTag.device_uuid)
            .where(DeviceTag.device_uuid == Device.uuid, DeviceTag.tag == f.tag)
            .exists()
        )
    if f.group_id is not None:
        cond.append(Device.group_id == f.group_id)
    if f.query is not None:
        cond.append(to_clause(f.query))
    return cond


class DeviceRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def add(self, device: Device, tags: Iterable[str] = ()) -> None:
        self.s.add(device)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            raise DuplicateError("device", "mac", device.mac) from exc
        await self.set_tags(device.uuid, tags)

    async def add_many(self, devices: Sequence[tuple[Device, Iterable[str]]]) -> None:
        """Insert many devices with their tags (executemany, one round of statements)."""
        if not devices:
            return
        table = cast(Table, Device.__table__)
        rows = [{c.name: getattr(d, c.key) for c in table.columns} for d, _ in devices]
        try:
            await self.s.execute(insert(table), rows)
        except IntegrityError as exc:
            raise DuplicateError("device", "mac", "(one of the batch)") from exc
        tags = [{"device_uuid": d.uuid, "tag": t} for d, ts in devices for t in sorted(set(ts))]
        if tags:
            await self.s.execute(insert(DeviceTag), tags)

    async def get(self, uuid: str) -> Device | None:
        return await self.s.get(Device, uuid)

    async def connection_status(self, uuid: str) -> str | None:
        """The device's connection status alone (None: no such device), without loading it."""
        status = await self.s.scalar(select(Device.connection_status).where(Device.uuid == uuid))
        return None if status is None else str(status)

    async def get_many(self, uuids: Sequence[str]) -> list[Device]:
        if not uuids:
            return []
        rows = await self.s.scalars(select(Device).where(Device.uuid.in_(uuids)))
        return list(rows)

    async def display_names(self, uuids: Sequence[str]) -> dict[str, str | None]:
        """``{uuid: display name}`` of the devices among ``uuids`` that exist."""
        if not uuids:
            return {}
        rows = await self.s.execute(
            select(Device.uuid, Device.display_name).where(Device.uuid.in_(sorted(uuids)))
        )
        return {uuid: name for uuid, name in rows.all()}

    async def credentials(self) -> list[tuple[str, str]]:
        """``(uuid, sealed psk)`` of every device, in uuid order."""
        rows = await self.s.execute(select(Device.uuid, Device.psk_encrypted).order_by(Device.uuid))
        return [(u, p) for u, p in rows]

    async def credentials_by_mac(self, mac_keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``mac_key → (uuid, sealed psk)`` for the devices among ``mac_keys``."""
        out: dict[str, tuple[str, str]] = {}
        for i in range(0, len(mac_keys), 5000):
            rows = await self.s.execute(
                select(Device.mac_key, Device.uuid, Device.psk_encrypted).where(
                    Device.mac_key.in_(mac_keys[i : i + 5000])
                )
            )
            out.update({k: (u, p) for k, u, p in rows})
        return out

    async def uuids_with_status(self, status: str, nodes: Sequence[str] | None = None) -> list[str]:
        """Devices in ``status``; ``nodes``: only those whose latest status came through one
        of these broker nodes."""
        query = select(Device.uuid).where(Device.connection_status == status)
        if nodes is not None:
            query = query.where(Device.broker_node.in_(list(nodes)))
        rows = await self.s.scalars(query)
        return list(rows)

    async def offline_on_node(self, node: str, offline: str, at: datetime) -> list[str]:
        """Set every device not ``offline`` whose latest status came through ``node`` to
        ``offline``, in one statement (a device that said ``1`` through another node
        meanwhile has that node by then and is left alone); their uuids."""
        rows = await self.s.execute(
            update(Device)
            .where(Device.broker_node == node, Device.connection_status != offline)
            .values(connection_status=offline, connection_changed_at=at)
            .returning(Device.uuid)
            .execution_options(synchronize_session=False)
        )
        return sorted(u for (u,) in rows)

    async def statuses_of(self, uuids: Sequence[str]) -> dict[str, str]:
        """``{uuid: connection status}`` of the devices among ``uuids``."""
        out: dict[str, str] = {}
        for start in range(0, len(uuids), 1000):
            rows = await self.s.execute(
                select(Device.uuid, Device.connection_status).where(
                    Device.uuid.in_(list(uuids[start : start + 1000]))
                )
            )
            out.update({u: st for u, st in rows})
        return out

    async def exists_mac(self, mac_key: str) -> bool:
        found = await self.s.scalar(select(Device.uuid).where(Device.mac_key == mac_key))
        return found is not None

    async def page(
        self, f: DeviceFilter, *, offset: int, limit: int, order: DeviceOrder = DeviceOrder()
    ) -> tuple[int, list[Device]]:
        return await _page(self.s, None, f, offset=offset, limit=limit, order=order)

    async def matching(self, uuids: Sequence[str], query: Node) -> set[str]:
        """Those of ``uuids`` that exist and match ``query`` now."""
        out: set[str] = set()
        for start in range(0, len(uuids), 5000):
            rows = await self.s.scalars(
                select(Device.uuid).where(
                    Device.uuid.in_(list(uuids[start : start + 5000])), to_clause(query)
                )
            )
            out.update(rows)
        return out

    async def uuids_named(self, name: str, limit: int) -> list[str]:
        """Gateways whose name is ``name`` (any letter case), else those whose name contains
        it; at most ``limit`` + 1 (so a caller can tell there are more)."""
        wanted = name.strip().lower()
        exact = await self.s.scalars(
            select(Device.uuid)
            .where(func.lower(Device.display_name) == wanted)
            .order_by(Device.uuid)
            .limit(limit + 1)
        )
        found = list(exact)
        if not found:
            partial = await self.s.scalars(
                select(Device.uuid)
                .where(func.lower(Device.display_name).contains(wanted, autoescape=True))
                .order_by(Device.uuid)
                .limit(limit + 1)
            )
            found = list(partial)
        return found

    async def count(self, f: DeviceFilter) -> int:
        total = await self.s.scalar(select(func.count()).select_from(Device).where(*_conditions(f)))
        return int(total or 0)

    async def uuids(self, f: DeviceFilter) -> list[str]:
        rows = await self.s.scalars(
            select(Device.uuid).where(*_conditions(f)).order_by(Device.created_at, Device.uuid)
        )
        return list(rows)

    async def models_of(self, uuids: Sequence[str]) -> dict[str, str]:
        """``{uuid: modelName}`` as last reported."""
        out: dict[str, str] = {}
        for start in range(0, len(uuids), 5000):
            rows = await self.s.execute(
                select(Device.uuid, Device.model_name).where(
                    Device.uuid.in_(list(uuids[start : start + 5000]))
                )
            )
            out.update({u: m for u, m in rows})
        return out

    async def delete(self, uuids: Sequence[str], at: datetime) -> list[str]:
        """Delete the devices that exist among ``uuids`` and revoke their certificates;
        returns those deleted."""
        if not uuids:
            return []
        result = await self.s.scalars(
            delete(Device).where(Device.uuid.in_(uuids)).returning(Device.uuid)
        )
        deleted = list(result)
        await self.s.execute(
            update(DeviceCertificate)
            .where(
                DeviceCertificate.device_uuid.in_(deleted), DeviceCertificate.revoked_at.is_(None)
            )
            .values(revoked_at=at)
            .execution_options(synchronize_session=False)
        )
        return deleted

    async def tags_of(self, uuids: Sequence[str]) -> dict[str, list[str]]:
        return await _tags_of(self.s, uuids)

    async def set_tags(self, uuid: str, tags: Iterable[str]) -> None:
        await self.s.execute(delete(DeviceTag).where(DeviceTag.device_uuid == uuid))
        wanted = sorted(set(tags))
        if wanted:
            await self.s.execute(
                insert(DeviceTag), [{"device_uuid": uuid, "tag": t} for t in wanted]
            )

    async def properties_of(self, uuids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The cached properties of the given devices that exist."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(uuids), 1000):
            rows = await self.s.execute(
                select(Device.uuid, Device.properties).where(
                    Device.uuid.in_(uuids[start : start + 1000])
                )
            )
            out.update({u: dict(p or {}) for u, p in rows})
        return out

    async def set_many_properties(
        self, rows: Sequence[tuple[str, dict[str, Any]]], at: datetime
    ) -> None:
        """Replace the properties of many devices: one UPDATE, executed for every row."""
        if not rows:
            return
        table = cast(Table, Device.__table__)
        indexed = indexed_properties({})
        await self.s.execute(
            update(table)
            .where(table.c.uuid == bindparam("u"))
            .values(
                properties=bindparam("p", type_=table.c.properties.type),
                properties_updated_at=bindparam("at"),
                **{column: bindparam(f"i_{column}") for column in indexed},
            ),
            [
                {
                    "u": uuid,
                    "p": properties,
                    "at": at,
                    **{f"i_{k}": v for k, v in indexed_properties(properties).items()},
                }
                for uuid, properties in rows
            ],
        )

    async def set_statuses(self, rows: Sequence[tuple[str, str]], at: datetime) -> None:
        """Set ``(uuid, status)`` pairs; a row already in that status keeps its change time."""
        if not rows:
            return
        table = cast(Table, Device.__table__)
        t = table.c
        # a Core statement: executemany of one UPDATE (the ORM form wants primary keys)
        await self.s.execute(
            update(table)
            .where(t.uuid == bindparam("u"), t.connection_status != bindparam("st"))
            .values(connection_status=bindparam("st"), connection_changed_at=bindparam("at")),
            [{"u": u, "st": st, "at": at} for u, st in rows],
        )

    async def set_statuses_on_nodes(
        self, rows: Sequence[tuple[str, str, str]], at: datetime, *, online: str
    ) -> None:
        """Set ``(uuid, status, broker node)`` triples in the same one UPDATE: the node is
        recorded with the status; a row already in that status keeps its change time, and a
        row already so (status and node) is not written. A status other than ``online``
        through a node the gateway has left (its will, published there late) is ignored: the
        gateway said ``online`` through another node since."""
        if not rows:
            return
        table = cast(Table, Device.__table__)
        t = table.c
        await self.s.execute(
            update(table)
            .where(
                t.uuid == bindparam("u"),
                (t.connection_status != bindparam("st"))
                | t.broker_node.is_distinct_from(bindparam("node")),
                (bindparam("st") == online)
                | t.broker_node.is_(None)
                | (t.broker_node == bindparam("node")),
            )
            .values(
                connection_status=bindparam("st"),
                broker_node=bindparam("node"),
                connection_changed_at=case(
                    (t.connection_status == bindparam("st"), t.connection_changed_at),
                    # typed: in a CASE the column's type (naive UTC on the way in) is not
                    # inferred
                    else_=bindparam("at", type_=t.connection_changed_at.type),
                ),
            ),
            [{"u": u, "st": st, "node": node, "at": at} for u, st, node in rows],
        )

    async def set_group(self, uuids: Sequence[str], group_id: int | None, at: datetime) -> None:
        if uuids:
            await self.s.execute(
                update(Device)
                .where(Device.uuid.in_(uuids))
                .values(group_id=group_id, updated_at=at)
            )

    async def breakdown(self, column: str, limit: int = 12) -> list[tuple[str, int]]:
        """Gateways counted by ``connection_status``, ``model_name`` or ``software_version``,
        most frequent first (the dashboard's charts)."""
        col = {
            "status": Device.connection_status,
            "model": Device.model_name,
            "firmware": Device.software_version,
        }[column]
        n = func.count().label("n")
        rows = await self.s.execute(select(col, n).group_by(col).order_by(n.desc()).limit(limit))
        return [(str(value or ""), int(count)) for value, count in rows]

    async def status_counts(self, group_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """``{group_id: {status: count}}`` for the given groups."""
        out: dict[int, dict[str, int]] = defaultdict(dict)
        if group_ids:
            rows = await self.s.execute(
                select(Device.group_id, Device.connection_status, func.count())
                .where(Device.group_id.in_(group_ids))
                .group_by(Device.group_id, Device.connection_status)
            )
            for gid, status, n in rows:
                if gid is not None:
                    out[gid][status] = n
        return out

    async def in_groups(self, group_ids: Sequence[int]) -> dict[int, list[Device]]:
        out: dict[int, list[Device]] = defaultdict(list)
        if group_ids:
            rows = await self.s.scalars(
                select(Device)
                .where(Device.group_id.in_(group_ids))
                .order_by(Device.created_at, Device.uuid)
            )
            for d in rows:
                assert d.group_id is not None
                out[d.group_id].append(d)
        return out


async def device_presence(
    conn: AsyncSession | AsyncConnection, uuid: str
) -> tuple[str, str | None] | None:
    """``(connection status, broker node)`` of a device (None: no such device): one query,
    which a connection without a transaction (``Database.autocommit``) runs in one round
    trip."""
    row = (
        await conn.execute(
            select(Device.connection_status, Device.broker_node).where(Device.uuid == uuid)
        )
    ).first()
    return None if row is None else (str(row[0]), row[1])


LIST_COLUMNS: tuple[Any, ...] = (
    Device.uuid,
    Device.display_name,
    Device.description,
    Device.mac,
    Device.serial_number,
    Device.icc_id,
    Device.created_at,
    Device.updated_at,
    Device.connection_status,
    Device.connection_changed_at,
    Device.properties,
    Device.properties_updated_at,
    Device.group_id,
    Device.attributes,
)
"""What the device list shows of a device (``presenters/devices.py``): read as Core rows,
each column under its ``Device`` attribute's name, and ``tags``."""

Reader = AsyncSession | AsyncConnection


def _tags_column(uuid: Any, dialect: str) -> Any:
    """A device's tags in tag order, as a list: a correlated subquery on ``uuid``."""
    if dialect == "postgresql":
        agg = select(func.array_agg(aggregate_order_by(DeviceTag.tag, DeviceTag.tag)))
        return agg.where(DeviceTag.device_uuid == uuid).scalar_subquery().label("tags")
    ordered = (
        select(DeviceTag.tag)
        .where(DeviceTag.device_uuid == uuid)
        .order_by(DeviceTag.tag)
        .correlate_except(DeviceTag)
        .subquery()
    )
    tags = select(func.json_group_array(ordered.c.tag)).scalar_subquery()
    return type_coerce(tags, JSON).label("tags")


async def _fetch(
    db: Reader,
    columns: Sequence[Any] | None,
    cond: Sequence[ColumnElement[bool]],
    order: Sequence[Any],
    offset: int,
    limit: int,
    cache: Hashable | None = None,
) -> list[Any]:
    """``Device`` objects (``columns`` None), or rows of ``columns`` each with its device's
    ``tags``: the page picked first (with its sort keys, to put it in ``order`` again), then
    its rows' tags (a subquery in the page's own select would run for every row the offset
    skips). ``cache``: a key under which the statement for ``columns``, ``cond`` and ``order``
    may be kept (none: built for this call)."""
    if columns is None:
        objects = select(Device).where(*cond).order_by(*order).offset(offset).limit(limit)
        return list(await db.scalars(objects))
    dialect = _dialect(db)
    params = {"page_offset": offset, "page_limit": limit}
    if cache is None:
        return list(await db.execute(_listed(columns, cond, order, dialect), params))
    stmt = _LISTED.get((cache, dialect))
    if stmt is None:
        stmt = _LISTED[(cache, dialect)] = _listed(columns, cond, order, dialect)
    return list(await db.execute(stmt, params))


_LISTED: dict[tuple[Hashable, str], Any] = {}
"""The list's statement without a filter, by order and dialect: built once (building one,
subquery and all, costs as much CPU as running it)."""


def _listed(
    columns: Sequence[Any], cond: Sequence[ColumnElement[bool]], order: Sequence[Any], dialect: str
) -> Any:
    """A page of rows of ``columns`` with their ``tags``, offset and limit bound as
    ``page_offset`` and ``page_limit``."""
    # the sort keys go along with the page, so the outer select orders by the same values
    keys = [o.element.label(f"sort_{i}") for i, o in enumerate(order)]
    page = (
        select(*columns, *keys)
        .where(*cond)
        .order_by(*order)
        .offset(bindparam("page_offset"))
        .limit(bindparam("page_limit"))
    )
    sub = page.subquery()
    again = [
        sub.c[k.name].desc() if o.modifier is operators.desc_op else sub.c[k.name].asc()
        for k, o in zip(keys, order, strict=True)
    ]
    picked = [sub.c[c.key] for c in columns]
    return select(*picked, _tags_column(sub.c.uuid, dialect)).order_by(*again)


def _dialect(db: Reader) -> str:
    return db.dialect.name if isinstance(db, AsyncConnection) else db.get_bind().dialect.name


async def _page(
    db: Reader,
    columns: Sequence[Any] | None,
    f: DeviceFilter,
    *,
    offset: int,
    limit: int,
    order: DeviceOrder,
    total: int | None = None,
) -> tuple[int, list[Any]]:
    """A page of devices in ``order`` and the number matching ``f`` (``total`` when the caller
    knows it): ``Device`` objects, or rows of ``columns``."""
    cond = _conditions(f)
    if order.key == "group":
        return await _page_by_group(db, columns, cond, offset, limit, order.descending)
    if total is None:
        total = int(await db.scalar(select(func.count()).select_from(Device).where(*cond)) or 0)
    cache = order if not cond and columns is LIST_COLUMNS else None
    return total, await _fetch(db, columns, cond, order_clauses(order), offset, limit, cache)


async def _page_by_group(
    db: Reader,
    columns: Sequence[Any] | None,
    cond: list[ColumnElement[bool]],
    offset: int,
    limit: int,
    descending: bool,
) -> tuple[int, list[Any]]:
    """The list sorted by group name (ties by uuid), gateways without a group last, as
    ``order_clauses(DeviceOrder("group"))`` orders it, without a join that sorts the fleet:
    the members counted per group, the groups put in order by the database (its
    collation; groups are few beside their members), the groups before the page skipped
    whole, and the page read group by group from the index on (group_id, uuid)."""
    counts: dict[int | None, int] = {
        gid: int(n)
        for gid, n in await db.execute(
            select(Device.group_id, func.count()).where(*cond).group_by(Device.group_id)
        )
    }
    total = sum(counts.values())
    name = Group.name.desc() if descending else Group.name.asc()
    ordered: list[int | None] = [
        g for g in await db.scalars(select(Group.id).order_by(name)) if g in counts
    ]
    if None in counts:
        ordered.append(None)
    uuid_order = Device.uuid.desc() if descending else Device.uuid.asc()
    out: list[Any] = []
    skip = offset
    for gid in ordered:
        if len(out) >= limit:
            break
        n = counts.get(gid, 0)
        if skip >= n:
            skip -= n
            continue
        member = Device.group_id.is_(None) if gid is None else Device.group_id == gid
        out += await _fetch(db, columns, [*cond, member], [uuid_order], skip, limit - len(out))
        skip = 0
    return total, out


async def _tags_of(db: Reader, uuids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    if uuids:
        rows = await db.execute(
            select(DeviceTag.device_uuid, DeviceTag.tag)
            .where(DeviceTag.device_uuid.in_(uuids))
            .order_by(DeviceTag.tag)
        )
        for uuid, tag in rows:
            out[uuid].append(tag)
    return out


class DeviceListReads:
    """The device list read as Core rows of ``LIST_COLUMNS`` (no ORM identity map, no
    objects built), for a connection outside a transaction (``Database.autocommit``): the
    list's statements each read their own snapshot, as they would in a READ COMMITTED
    transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.c = conn

    async def page(
        self, f: DeviceFilter, *, offset: int, limit: int, order: DeviceOrder, total: int | None
    ) -> tuple[int, list[Any]]:
        return await _page(
            self.c, LIST_COLUMNS, f, offset=offset, limit=limit, order=order, total=total
        )

    async def count(self, f: DeviceFilter) -> int:
        n = await self.c.scalar(select(func.count()).select_from(Device).where(*_conditions(f)))
        return int(n or 0)
