"""Fleet query AST → SQL condition over ``devices``, the same on SQLite and PostgreSQL.

``!=`` counts a missing value as "not equal", so ``model != "X"`` also selects gateways
that never reported a model.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Float, and_, cast, false, func, not_, or_, select, true

from edgefleet.db.tables import Device, DeviceTag, Group
from edgefleet.domain.devices import mac_key, version_key
from edgefleet.domain.query import (
    And,
    Compare,
    Has,
    HasTag,
    InList,
    Node,
    Not,
    Or,
    Value,
    created_at_value,
)
from edgefleet.errors import QuerySyntaxError, ValidationError

TEXT_COLUMNS: dict[str, Any] = {
    "uuid": Device.uuid,
    "name": Device.display_name,
    "serialNumber": Device.serial_number,
    "description": Device.description,
    "status": Device.connection_status,
    "model": Device.model_name,
    "softwareVersion": Device.software_version,
    "defaultRoute": Device.default_route,
    "aliasName": Device.alias_name,
}


def _cmp(col: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "=":
        return col == value  # type: ignore[no-any-return]
    if op == "!=":
        return or_(col.is_(None), col != value)
    if op == "<":
        return col < value  # type: ignore[no-any-return]
    if op == "<=":
        return col <= value  # type: ignore[no-any-return]
    if op == ">":
        return col > value  # type: ignore[no-any-return]
    if op == ">=":
        return col >= value  # type: ignore[no-any-return]
    if op == "~":
        return func.lower(col).contains(str(value).lower(), autoescape=True)
    raise ValueError(op)


def _attr(key: str, value: Value) -> Any:
    element = Device.attributes[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return cast(element.as_float(), Float)
    if isinstance(value, bool):
        return element.as_boolean()
    return element.as_string()


def _compare(field: str, op: str, value: Value) -> ColumnElement[bool]:
    if field == "mac":
        try:
            key = mac_key(str(value))
        except ValidationError:
            if op == "~":
                return _cmp(Device.mac_key, "~", str(value).replace(":", "").replace("-", ""))
            return false() if op == "=" else true()
        return _cmp(Device.mac_key, op if op != "~" else "~", key)
    if field == "softwareVersion" and op in ("<", "<=", ">", ">="):
        return and_(
            Device.software_version_key != "",
            _cmp(Device.software_version_key, op, version_key(str(value))),
        )
    if field == "group":
        names = select(Group.id).where(_cmp(Group.name, "=" if op != "~" else "~", value))
        member = Device.group_id.in_(names)
        return or_(Device.group_id.is_(None), not_(member)) if op == "!=" else member
    if field == "groupId":
        return _cmp(Device.group_id, op, value)
    if field == "createdAt":
        return _cmp(Device.created_at, op, created_at_value(str(value)))
    if field.startswith("attr."):
        return _cmp(_attr(field[5:], value), op, value)
    if value is None:
        col = TEXT_COLUMNS[field]
        missing: ColumnElement[bool] = col.is_(None) if op == "=" else col.isnot(None)
        return missing
    return _cmp(TEXT_COLUMNS[field], op, value if isinstance(value, str) else str(value))


def _has(field: str) -> ColumnElement[bool]:
    if field.startswith("attr."):
        # as_string() is NULL for a missing key or a JSON null on both databases
        # (the raw element on SQLite is JSON_QUOTE(...), the string 'null', never NULL)
        text = Device.attributes[field[5:]].as_string()
        return and_(text.isnot(None), text != "")
    if field in ("group", "groupId"):
        return Device.group_id.isnot(None)
    if field == "mac":
        return Device.mac_key != ""
    if field == "createdAt":
        return true()
    col = TEXT_COLUMNS[field]
    return and_(col.isnot(None), col != "")


def to_clause(node: Node) -> ColumnElement[bool]:
    """The WHERE condition that selects the devices ``node`` describes."""
    if isinstance(node, And):
        return and_(*(to_clause(n) for n in node.items))
    if isinstance(node, Or):
        return or_(*(to_clause(n) for n in node.items))
    if isinstance(node, Not):
        return not_(to_clause(node.item))
    if isinstance(node, Compare):
        return _compare(node.field, node.op, node.value)
    if isinstance(node, InList):
        return or_(*(_compare(node.field, "=", v) for v in node.values))
    if isinstance(node, HasTag):
        return (
            select(DeviceTag.device_uuid)
            .where(DeviceTag.device_uuid == Device.uuid, DeviceTag.tag == node.tag)
            .exists()
        )
    if isinstance(node, Has):
        return _has(node.field)
    raise QuerySyntaxError(f"unsupported query node {node!r}", "")
