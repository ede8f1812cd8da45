"""``/api/v1/broker/…``: hooks for brokers that ask the server (a ``broker``-scope token).

- ``POST /broker/authn`` and ``POST /broker/authz`` answer in the shape of EMQX's HTTP
  authentication and authorisation (``{"result": "allow" | "deny", "is_superuser"}``), so an
  EMQX-compatible broker needs only its URL, a body template and the ``mx-api-token`` header.
- ``GET /broker/psk/{identity}`` gives one gateway's key (hex), for brokers that ask for a key
  in their PSK callback.
- ``GET /broker/psk-file`` gives the whole store as ``identity:hex`` lines, the format of
  Mosquitto's ``psk_file``, for broker nodes that keep a local copy (with an ETag: 304 while
  unchanged); ``?since=<cursor>`` gives only what changed after an earlier answer.
- ``PUT /broker/nodes/{name}`` (``{"address": "host:port"}``): a broker node says it is up and
  where the servers reach it, at every key sync; ``DELETE`` withdraws it (servers with
  ``mqtt.node_registration`` follow these, docs/scaling.md).

Every answer comes from the key cache in memory (services/keys.py), never by decrypting keys.

Decisions are not written to the audit log (one per connection and subscription); denials are
logged with their reason, never with the password.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.api.deps import ContainerDep, require
from edgefleet.api.responses import reply
from edgefleet.api.responses.service import Authn, Authz, Psk, RegisteredNode
from edgefleet.domain.auth import Permission, Principal
from edgefleet.domain.broker_access import Action
from edgefleet.errors import DeviceNotFoundError, NotFoundError
from edgefleet.services.keys import SYNC_ANSWERS

log = logging.getLogger(__name__)


async def literal_path(request: Request) -> None:
    """The path as sent spells ``/api/v1/broker/`` (not ``/api/v1/%62roker/``): the proxies
    in front of the public side (the AWS ALB's rule, the Ingress's list) keep these routes
    from the internet by their path, which a percent-encoded one would slip past."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    if not raw.startswith(b"/api/v1/broker/"):
        raise NotFoundError("not found")


router = APIRouter(
    prefix="/api/v1/broker", tags=["broker hooks"], dependencies=[Depends(literal_path)]
)
BrokerCaller = Annotated[Principal, Depends(require(Permission.BROKER))]


class AuthnBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = Field(default="", max_length=256)
    password: str = Field(default="", max_length=1024)
    clientid: str = Field(default="", max_length=256)
    cert_common_name: str = Field(default="", max_length=256)
    peerhost: str = Field(default="", max_length=64)


class AuthzBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = Field(default="", max_length=256)
    clientid: str = Field(default="", max_length=256)
    topic: str = Field(min_length=1, max_length=65535)
    action: Action


@router.post("/authn", name="broker.authn", response_model=Authn)
async def authenticate(c: ContainerDep, _: BrokerCaller, body: AuthnBody) -> Response:
    result = await c.broker_auth.authenticate(
        username=body.username,
        password=body.password,
        client_id=body.clientid,
        cert_common_name=body.cert_common_name,
    )
    if not result.allow:
        log.info(
            "broker authn denied: user=%s client=%s peer=%s: %s",
            body.username,
            body.clientid,
            body.peerhost,
            result.reason,
        )
    return reply({"result": "allow" if result.allow else "deny", "is_superuser": result.superuser})


@router.post("/authz", name="broker.authz", response_model=Authz)
async def authorize(c: ContainerDep, _: BrokerCaller, body: AuthzBody) -> Response:
    ok = await c.broker_auth.authorize(username=body.username, topic=body.topic, action=body.action)
    if not ok:
        log.info("broker authz denied: user=%s %s %s", body.username, body.action, body.topic)
    return reply({"result": "allow" if ok else "deny"})


@router.get("/psk/{identity}", name="broker.psk", response_model=Psk)
async def psk(c: ContainerDep, _: BrokerCaller, identity: str) -> Response:
    key = await c.broker_auth.device_key(identity)
    if key is None:
        raise DeviceNotFoundError(identity)
    return reply({"identity": identity, "psk": key})


@router.get(
    "/psk-file",
    name="broker.psk_file",
    response_class=PlainTextResponse,
    responses={304: {"description": "unchanged since the ETag sent in If-None-Match"}},
)
async def psk_file(
    c: ContainerDep,
    _: BrokerCaller,
    request: Request,
    since: Annotated[str | None, Query(max_length=20, pattern=r"^[0-9]*$")] = None,
) -> Response:
    """Every gateway key as ``identity:hex`` lines (Mosquitto's ``psk_file``); or, with
    ``since`` (a cursor from an earlier answer, empty at first), a first line
    ``# cursor=<n> full|changes`` followed by every key (``full``) or only the keys set
    (``identity:hex``) and removed (``-identity``) after that cursor (docs/protocol.md)."""
    headers = {"Cache-Control": "no-store"}
    keys = c.keys
    if since is None:
        await keys.refresh()
        full = await keys.full_text()
        headers |= {"ETag": f'"{full.digest}"', "X-Edgefleet-Cursor": str(full.cursor)}
        if request.headers.get("if-none-match", "") == headers["ETag"]:
            SYNC_ANSWERS.labels("unchanged").inc()
            return Response(status_code=304, headers=headers)
        SYNC_ANSWERS.labels("full").inc()
        return Response(full.body, media_type="text/plain; charset=utf-8", headers=headers)
    answer = await keys.sync(int(since) if since else None)
    headers |= {
        "X-Edgefleet-Cursor": str(answer.cursor),
        "X-Edgefleet-Sync": "full" if answer.full else "changes",
    }
    return Response(answer.body, media_type="text/plain; charset=utf-8", headers=headers)


class NodeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    address: str = Field(min_length=3, max_length=270, description="host:port or [v6]:port")


NodeName = Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")]


@router.put("/nodes/{name}", name="broker.node_register", response_model=RegisteredNode)
async def register_node(
    c: ContainerDep, _: BrokerCaller, name: NodeName, body: NodeBody
) -> Response:
    node = await c.node_registry.register(name, body.address)
    return reply({"name": node.name, "address": node.address})


@router.delete("/nodes/{name}", name="broker.node_withdraw", status_code=204)
async def withdraw_node(c: ContainerDep, _: BrokerCaller, name: NodeName) -> Response:
    await c.node_registry.withdraw(name)
    return Response(status_code=204)
