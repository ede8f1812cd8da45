"""The list wrapper every list answer uses."""

from __future__ import annotations

from typing import Any


def page(total: int, offset: int, limit: int, data: list[Any]) -> dict[str, Any]:
    """ThingsPro's list wrapper, used by every list of ours too."""
    return {"count": total, "limit": limit, "offset": offset, "data": data}
