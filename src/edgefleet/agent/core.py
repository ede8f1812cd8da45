"""The agent: one MQTT connection as a ThingsPro gateway, kept up forever, answering requests.

connect   client id = uuid, TLS-PSK (identity uuid) or X.509, will "0" retained QoS 1
announce  "1" (QoS 1, retained) on …/status, subscribe QoS 1 to …/server
answer    each request in its own task, on …/client; events there too
reconnect jittered exponential backoff, 1 s doubling up to 60 s, forever
stop      "0" retained on …/status, DISCONNECT (no will), background jobs cancelled
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.dispatch import SIGN, Dispatcher, Outcome, load_plugins
from edgefleet.agent.plugin import ENTRY_POINT_GROUP, AgentContext, Background, Job, Route
from edgefleet.agent.state import TaskStore
from edgefleet.errors import MessageError
from edgefleet.gateway.routing import refusal
from edgefleet.protocol import topics
from edgefleet.protocol.messages import (
    MAX_MESSAGE_BYTES,
    EventMessage,
    RequestMessage,
    ResponseMessage,
    decode_request,
    encode,
    encode_response,
    new_event_id,
)
from edgefleet.protocol.psk import psk_client_context

log = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
OUTBOX_LIMIT = 1000


def backoff(
    attempt: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP
) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): "equal jitter", at most ``cap``."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    if config.tls == "psk":
        return psk_client_context(config.deviceUUID, config.psk_hex())
    ctx = ssl.create_default_context(
        cafile=str(config.caFile) if config.caFile is not None else None
    )
    assert config.certFile is not None and config.keyFile is not None  # checked by the model
    ctx.load_cert_chain(str(config.certFile), str(config.keyFile))
    return ctx


async def _after(sent: asyncio.Event, job: Job) -> None:
    await sent.wait()
    await job()


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        group: str = ENTRY_POINT_GROUP,
        extra_routes: tuple[Route, ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.group = group
        self.extra_routes = extra_routes
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.uuid = config.deviceUUID
        self.connected = asyncio.Event()
        self.connections = 0
        self.attempts = 0
        self.executed: Counter[tuple[str, str]] = Counter()
        self.background = Background()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._outbox: deque[tuple[str, bytes]] = deque(maxlen=OUTBOX_LIMIT)
        self._inflight: dict[str, asyncio.Future[ResponseMessage]] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self._store: TaskStore | None = None
        self.dispatcher: Dispatcher | None = None

    def _topic(self, channel: topics.Channel) -> str:
        return topics.topic(self.uuid, channel)

    def stop(self) -> None:
        """Ask :meth:`run` to say offline, disconnect and return (safe from a signal handler)."""
        self._stop.set()

    @property
    def data_dir(self) -> Path:
        return self.config.dataDir

    # --- life cycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the handlers, then stay connected until :meth:`stop`."""
        async with self.prepared():
            if not self.config.enable:
                log.warning("remote control is disabled (enable = false); not connecting")
                await self._stop.wait()
                return
            await self._connect_forever()
            await self._drain_handlers()

    @contextlib.asynccontextmanager
    async def prepared(self) -> AsyncIterator[None]:
        """Task store, HTTP client and handlers ready (what :meth:`execute` needs)."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._store = TaskStore(self.data_dir / "tasks.sqlite3")
        try:
            async with httpx.AsyncClient(
                follow_redirects=True, timeout=httpx.Timeout(30.0, connect=15.0)
            ) as http:
                ctx = AgentContext(
                    config=self.config,
                    emit=self.emit,
                    data_dir=self.data_dir,
                    http=http,
                    background=self.background,
                    answered=self._answered,
                )
                routes = load_plugins(ctx, self.group, self.config.disabledHandlers)
                self.dispatcher = Dispatcher([*self.extra_routes, *routes])
                log.info(
                    "agent %s: %d routes; broker %s:%d (%s)",
                    self.uuid,
                    len(self.dispatcher.routes),
                    self.config.remoteHost,
                    self.config.remotePort,
                    self.config.tls,
                )
                try:
                    yield
                finally:
                    await self.background.cancel_all()
                    for t in list(self._handling):
                        t.cancel()
                    await asyncio.gather(*self._handling, return_exceptions=True)
        finally:
            self._store.close()
            self._store = None
            self.dispatcher = None

    async def _connect_forever(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            before = self.connections
            self.attempts += 1
            try:
                await self._session()
            except (aiomqtt.MqttError, OSError) as exc:  # ssl.SSLError is an OSError
                log.warning("broker %s:%d: %s", self.config.remoteHost, self.config.remotePort, exc)
            except Exception:  # reconnect forever, whatever went wrong
                log.exception("MQTT session failed")
            if self._stop.is_set():
                return
            if self.connections != before:
                attempt = 0  # it was connected: start the backoff over
            delay = backoff(attempt, self.rng)
            attempt += 1
            log.info("reconnecting in %.1f s", delay)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    async def _session(self) -> None:
        status = self._topic(topics.Channel.STATUS)
        client = aiomqtt.Client(
            self.config.remoteHost,
            self.config.remotePort,
            identifier=self.uuid,
            keepalive=self.config.keepalive,
            will=aiomqtt.Will(status, b"0", qos=1, retain=True),
            tls_context=tls_context(self.config),
            clean_session=self.config.cleanSession,
        )
        async with client:
            sock = client._client.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await client.subscribe(self._topic(topics.Channel.SERVER), qos=1)
            await client.publish(status, b"1", qos=1, retain=True)
            self._client = client
            self.connections += 1
            self.connected.set()
            log.info(
                "connected to %s:%d as %s",
                self.config.remoteHost,
                self.config.remotePort,
                self.uuid,
            )
            try:
                await self._flush_outbox(client)
                reader = asyncio.create_task(self._read(client), name="agent-read")
                stopper = asyncio.create_task(self._stop.wait(), name="agent-stop")
                try:
                    done, _ = await asyncio.wait(
                        {reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for t in (reader, stopper):
                        t.cancel()
                    await asyncio.gather(reader, stopper, return_exceptions=True)
                if reader in done:
                    reader.result()  # raises the MqttError that ended the session
                    return
                await self._drain_handlers(grace=5)
                self._client = None
                await client.publish(status, b"0", qos=1, retain=True)
                log.info("offline: said 0 and disconnecting")
            finally:
                self._client = None
                self.connected.clear()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            task = asyncio.create_task(self._handle(payload), name="agent-request")
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

    async def _drain_handlers(self, grace: float = 10.0) -> None:
        if self._handling:
            await asyncio.wait(set(self._handling), timeout=grace)

    # --- requests --------------------------------------------------------------------------------

    async def _handle(self, payload: bytes) -> None:
        try:
            request = decode_request(payload)
        except MessageError as exc:
            log.warning("rejected request: %s", exc.message)
            refused = refusal(payload, exc.message, SIGN, self.rng)
            if refused is not None:
                await self._send(self._topic(topics.Channel.CLIENT), encode_response(refused))
            return
        response, outcome = await self.execute(request)
        # the jobs are known (and cancellable by task_id) from now on, but start only once the
        # answer is out: a reboot must not overtake its own answer
        sent = asyncio.Event()
        jobs = [
            self.background.spawn(
                _after(sent, job),
                name=f"{request.method} {request.resource} #{i}",
                task_id=request.task_id,
            )
            for i, job in enumerate(outcome.deferred if outcome is not None else [])
        ]
        try:
            await self._send(self._topic(topics.Channel.CLIENT), encode_response(response))
        except BaseException:
            for t in jobs:
                t.cancel()
            raise
        sent.set()

    def _answered(self, task_id: str) -> bool:
        if self._store is None:
            return False
        try:
            return self._store.answer(task_id) is not None
        except Exception:
            log.exception("task store failed; task %s taken as unknown", task_id)
            return False

    async def execute(self, request: RequestMessage) -> tuple[ResponseMessage, Outcome | None]:
        """The answer to ``request``, run at most once per task_id (``Outcome`` when run now)."""
        assert self.dispatcher is not None and self._store is not None
        running = self._inflight.get(request.task_id)
        if running is not None:
            log.info("task %s is running; its answer will be sent again", request.task_id)
            return await asyncio.shield(running), None
        try:
            claim = self._store.claim(request)
        except Exception:
            log.exception("task store failed; running task %s unrecorded", request.task_id)
            claim = None
        if claim is not None and not claim.new:
            log.info("task %s was done before: answer sent again", request.task_id)
            assert claim.response is not None
            return claim.response, None
        future: asyncio.Future[ResponseMessage] = asyncio.get_running_loop().create_future()
        self._inflight[request.task_id] = future
        try:
            log.info("task %s: %s %s", request.task_id, request.method, request.resource)
            outcome = await self.dispatcher.dispatch(request)
            self.executed[(request.method, request.resource)] += 1
            try:
                self._store.finish(outcome.response)
            except Exception:
                log.exception("task store failed; answer to %s not recorded", request.task_id)
            future.set_result(outcome.response)
            return outcome.response, outcome
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters get it too
            raise
        finally:
            del self._inflight[request.task_id]

    # --- publishing ------------------------------------------------------------------------------

    async def emit(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """Publish an event; kept in the outbox while offline (the newest 1000). One larger than
        the protocol allows is logged and dropped."""
        event = EventMessage(
            method=method, resource=resource, data=data, code=code, event_id=new_event_id()
        )
        payload = encode(event)
        if len(payload) > MAX_MESSAGE_BYTES:
            # the broker would close the connection, and the outbox would send it again
            log.warning(
                "event %s %s of %d bytes not sent: over %d",
                method,
                resource,
                len(payload),
                MAX_MESSAGE_BYTES,
            )
            return
        await self._send(self._topic(topics.Channel.CLIENT), payload)

    async def _send(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is not None:
            try:
                await client.publish(topic, payload, qos=1)
                return
            except aiomqtt.MqttError as exc:
                log.warning("publish failed (%s); kept for the next connection", exc)
        self._outbox.append((topic, payload))

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        while self._outbox:
            topic, payload = self._outbox[0]
            await client.publish(topic, payload, qos=1)
            self._outbox.popleft()
