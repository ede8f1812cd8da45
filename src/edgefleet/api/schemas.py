"""HTTP request bodies (pydantic); the answers are shaped by ``edgefleet.presenters``.

Compatible endpoints answer exactly what the ThingsPro v2.5 spec shapes, plus a few
extra keys of ours (``tags``, ``attributes``, ``groupId``) that old clients ignore.
Their timestamps keep the original's form, ``2017-03-22T08:15:01.359380`` (UTC, no
offset); our own endpoints use RFC 3339 with an offset.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.api.inputs import AwareTimestamp, Int64
from edgefleet.domain.auth import TOKEN_DESCRIPTION_MAX, Role, Scope
from edgefleet.errors import ValidationError
from edgefleet.services.fleet import Selection

# --- requests --------------------------------------------------------------------------


class DeviceCreate(BaseModel):
    """ThingsPro's registration body; unknown keys are ignored as the original did."""

    model_config = ConfigDict(extra="ignore")

    mac: str = Field(min_length=1, max_length=32)
    displayName: str = Field(default="", max_length=255)
    serialNumber: str = Field(default="", max_length=128)
    description: str = Field(default="", max_length=4096)
    iccId: str = Field(default="", max_length=32)
    tags: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    displayName: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=4096)
    tags: list[str] | None = None
    attributes: dict[str, Any] | None = None


class DevicesUpdate(BaseModel):
    """``PATCH /devices``: one change to many gateways (ours)."""

    model_config = ConfigDict(extra="forbid")

    devices: list[str] = Field(min_length=1, max_length=10000)
    query: str | None = Field(default=None, max_length=4000)
    exact: bool = False
    addTags: list[str] = Field(default_factory=list, max_length=50)
    removeTags: list[str] = Field(default_factory=list, max_length=50)
    attributes: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _something(self) -> DevicesUpdate:
        if self.exact and self.query is None:
            raise ValueError("exact needs query, the fleet query the devices were selected from")
        if not (self.addTags or self.removeTags or self.attributes) and self.description is None:
            raise ValueError("nothing to change: give addTags, removeTags, attributes, description")
        return self


# A selection made in a list of a fleet query (the console's bulk actions): the compatible
# endpoints take a bare array of uuids, so the query comes as a parameter of ours.
SelectedFrom = Annotated[
    str | None,
    Query(
        description="ours: the fleet query the uuids were selected from; refused (409) unless "
        "each still matches it",
        max_length=4000,
    ),
]
Exact = Annotated[
    bool, Query(description="ours, with q: the uuids must also be every gateway q matches")
]


def selection(uuids: list[str], q: str | None, exact: bool) -> Selection | None:
    if q is None:
        if exact:
            raise ValidationError("exact needs q, the fleet query the uuids were selected from")
        return None
    return Selection(uuids, q, exact)


class GroupWrite(BaseModel):
    """POST and PUT ``/groups``: the spec sends a whole Group; only these keys are writable."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    description: str = Field(default="", max_length=4096)


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    description: str | None = Field(default=None, max_length=4096)


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the gateway UI also sends isKeepEmail

    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=TOKEN_DESCRIPTION_MAX)
    scope: Scope
    expiresAt: AwareTimestamp | None = None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254)
    role: Role
    password: str | None = Field(default=None, max_length=1024)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, max_length=1024)


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    locale: str = Field(max_length=16, description="en, zh_TW, or empty: the browser's")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currentPassword: str = Field(min_length=1, max_length=1024)
    newPassword: str = Field(min_length=1, max_length=1024)


class EventIds(BaseModel):
    """The body of the bulk alarm endpoints."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Int64] = Field(min_length=1, max_length=10_000)
