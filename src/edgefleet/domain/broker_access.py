"""Who may connect to the broker and which topics each may use (pure rules, no I/O).

A gateway is a client whose username (PSK identity or certificate CN) is its device uuid; it
must use that uuid as its client id, and may use only ``$ThingsPro/devices/<uuid>/…``.
The server's own user may use everything.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    ALL = "all"


def device_topic_allowed(device_uuid: str, topic: str, action: Action, *, prefix: str) -> bool:
    """A topic (publish) or topic filter (subscribe) inside the gateway's own subtree,
    ``<prefix>/<uuid>/…`` (the protocol's topic tree: ``topics.PREFIX``)."""
    own = f"{prefix}/{device_uuid}/"
    if not device_uuid or "+" in device_uuid or "#" in device_uuid or "/" in device_uuid:
        return False
    if not topic.startswith(own) or len(topic) == len(own):
        return False
    rest = topic[len(own) :]
    if "\x00" in topic:
        return False
    if action is Action.SUBSCRIBE:
        levels = rest.split("/")
        # wildcards only as whole levels, and '#' only last (what MQTT itself requires)
        for i, level in enumerate(levels):
            if ("+" in level and level != "+") or (
                "#" in level and (level != "#" or i != len(levels) - 1)
            ):
                return False
        return True
    return "+" not in rest and "#" not in rest
