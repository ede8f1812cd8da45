"""Gateways: identity rules, connection states and the cached system properties."""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from typing import Any

from edgefleet.errors import ValidationError


class ConnectionStatus(StrEnum):
    CREATED = "created"
    ONLINE = "online"
    OFFLINE = "offline"


PROPERTY_KEYS = (
    "aliasName",
    "gps",
    "iccId",
    "modelName",
    "softwareVersion",
    "defaultRoute",
    "wifi",
    "customProperties",
)
"""The properties a ThingsPro gateway reports and the server caches (spec ``Device.properties``)."""

_MAC_SEPARATORS = re.compile(r"[:\-.\s]")
_HEX12 = re.compile(r"[0-9a-f]{12}")
_VERSION_NUMBERS = re.compile(r"\d+")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def mac_key(mac: str) -> str:
    """The canonical form of a MAC (12 lowercase hex digits) used for lookups and uniqueness.

    Gateways and scripts send ``0090E8112233``, ``00:90:e8:11:22:33`` or ``00-90-E8-…``;
    all of these name the same device.
    """
    key = _MAC_SEPARATORS.sub("", mac).lower()
    if not _HEX12.fullmatch(key):
        raise ValidationError(f"mac {mac!r} is not a MAC address (12 hex digits)")
    return key


def new_psk() -> str:
    """A TLS pre-shared key as Mosquitto and the gateways take it: 32 random bytes, hex."""
    return secrets.token_hex(32)


def version_key(version: str) -> str:
    """A string that sorts like the version it comes from.

    ``"version 2.3.2 Build 18102617"`` and ``"2.3.2"`` keep their numbers in order, each
    zero-padded to ten digits, so ``"2.10"`` sorts after ``"2.4"`` in plain string order
    (in SQL as well as in Python); trailing zero parts are dropped, so ``"2.4.0"`` equals
    ``"2.4"``. Text without digits gives ``""``.
    """
    numbers = [int(n) for n in _VERSION_NUMBERS.findall(version)]
    while numbers and numbers[-1] == 0:  # 2.4.0 is 2.4
        numbers.pop()
    return ".".join(str(n).rjust(10, "0")[-10:] for n in numbers)


def check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise ValidationError(
            f"tag {tag!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit"
        )
    return tag


INDEXED_LENGTHS = {
    "model_name": 128,
    "software_version": 128,
    "software_version_key": 255,
    "default_route": 16,
    "alias_name": 255,
}
"""The sizes of the indexed columns (db/tables.py). A gateway may report longer values: they
are kept whole in its JSON properties and cut to these, so the database never refuses them."""


def indexed_properties(properties: dict[str, Any]) -> dict[str, str]:
    """The columns kept beside the JSON properties so that filters can use an index."""
    software_version = _text(properties.get("softwareVersion"))[
        : INDEXED_LENGTHS["software_version"]
    ]
    values = {
        "model_name": _text(properties.get("modelName")),
        "software_version": software_version,
        "software_version_key": version_key(software_version),
        "default_route": _text(properties.get("defaultRoute")),
        "alias_name": _text(properties.get("aliasName")),
    }
    return {column: value[: INDEXED_LENGTHS[column]] for column, value in values.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


SORT_KEYS = ("name", "status", "since", "mac", "model", "firmware", "group", "created")
"""What a gateway list sorts by: name, connection state, when the state last changed, MAC,
model, firmware (in version order), group name, registration time (the default)."""


def parse_sort(text: str) -> tuple[str, bool]:
    """``"name"`` or ``"-name"`` (descending) → ``("name", descending)``."""
    key, descending = (text[1:], True) if text.startswith("-") else (text, False)
    if key not in SORT_KEYS:
        raise ValidationError(f"sort must be one of {', '.join(SORT_KEYS)} (with - for descending)")
    return key, descending
