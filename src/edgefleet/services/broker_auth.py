"""Answers for brokers that ask the server who may connect and publish (HTTP hooks).

For brokers without a PSK file of their own (a cluster, EMQX-style HTTP authentication, a
PSK callback): the server is the source of truth. Every answer comes from memory: the
keys from the key cache (services/keys.py, current within a second across instances, at once
for changes made here), the rules from domain/broker_access.py. No check reads the database.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from edgefleet.domain.broker_access import Action, device_topic_allowed
from edgefleet.protocol import topics
from edgefleet.services.keys import KeyCache


@dataclass(frozen=True)
class AuthnResult:
    allow: bool
    superuser: bool = False
    reason: str = ""


class BrokerAuthService:
    def __init__(self, keys: KeyCache, server_username: str, server_password: str) -> None:
        self.keys = keys
        self.server_username = server_username
        self.server_password = server_password

    async def device_key(self, device_uuid: str) -> str | None:
        """The device's PSK (hex), or None when no such device is registered."""
        return await self.keys.key(device_uuid)

    async def authenticate(
        self, *, username: str, password: str, client_id: str, cert_common_name: str = ""
    ) -> AuthnResult:
        if username == self.server_username:
            ok = bool(self.server_password) and hmac.compare_digest(
                password.encode(), self.server_password.encode()
            )
            return AuthnResult(ok, superuser=ok, reason="" if ok else "wrong server password")
        if client_id != username:
            return AuthnResult(False, reason="a gateway's client id must be its uuid")
        key = await self.device_key(username)
        if key is None:
            return AuthnResult(False, reason="no such device")
        if cert_common_name:
            ok = cert_common_name == username
            return AuthnResult(ok, reason="" if ok else "certificate CN is not the uuid")
        ok = hmac.compare_digest(password.lower().encode(), key.encode())
        return AuthnResult(ok, reason="" if ok else "wrong key")

    async def authorize(self, *, username: str, topic: str, action: Action) -> bool:
        if username == self.server_username:
            return True
        if not device_topic_allowed(username, topic, action, prefix=topics.PREFIX):
            return False
        return await self.device_key(username) is not None
