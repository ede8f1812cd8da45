"""One virtual gateway: a real MQTT client with its own PSK identity.

It connects as a ThingsPro gateway does (client id = uuid, retained will ``0``, ``1`` on
connect), answers requests on its ``server`` topic with the handlers it shares with the
agent (``edgefleet.gateway``: this gateway is their host, in memory), and never
runs the same ``task_id`` twice (a redelivered request gets the first answer again).

Long-running requests behave as on a real gateway (docs/protocol.md, "Long-running requests"):
``post /system/reboot`` answers, waits its delay and drops the connection without DISCONNECT
(the broker publishes the will), stays away ``boot_seconds`` and comes back; ``post
/system/firmware`` answers ``accepted``, really downloads the file (streamed and hashed, never
stored), reports progress and a result event, and reboots into the new ``softwareVersion``;
``put /system/import`` downloads the archive, answers, and reboots 3 s later. ``delete
/system/tasks/{task_id}`` cancels such a job while it runs. Only :meth:`VirtualGateway.serve`
comes back after a reboot; :meth:`VirtualGateway.run` returns when the gateway goes down.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import httpx

from edgefleet.errors import MessageError
from edgefleet.gateway import handlers
from edgefleet.gateway.bodies import FileRef, TransferError
from edgefleet.gateway.handlers import SUCCESS
from edgefleet.gateway.host import Fetched, GatewayHost, Progress
from edgefleet.gateway.jobs import Background, JobState
from edgefleet.gateway.routing import (
    HandlerError,
    HostRoute,
    Job,
    Outcome,
    Reply,
    Request,
    Router,
    refusal,
    respond,
)
from edgefleet.protocol import topics
from edgefleet.protocol.messages import (
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

REMEMBERED_TASKS = 256
SANJI_REBOOT_DELAY = 3.0
"""Seconds between the answer and the reboot when a request gives no delay (as Sanji waits)."""
DOWNLOAD_TIMEOUT = 600.0
OUTBOX_LIMIT = 100
"""Events kept while disconnected (a job's progress and result), sent after the next connect."""
SIGN = ("simulator",)

ROUTER: Router[HostRoute[GatewayHost]] = Router(handlers.ROUTES)
"""One table for every simulated gateway: the gateway is the host its handlers run on."""


def download_client(max_connections: int = 100) -> httpx.AsyncClient:
    """The HTTP client for gateways' downloads; one per fleet. A request waits for a free
    connection (no pool timeout), so thousands of upgrades at once queue instead of failing."""
    return httpx.AsyncClient(
        follow_redirects=True,
        timeout=httpx.Timeout(60.0, connect=15.0, pool=None),
        limits=httpx.Limits(max_connections=max_connections),
    )


async def fetch(
    http: httpx.AsyncClient, ref: FileRef, progress: Progress | None = None
) -> tuple[int, str]:
    """Stream ``ref.url`` with ``ref.headers``, keeping nothing but its size and sha256;
    check ``ref.size`` and ``ref.sha256`` (``TransferError`` with the reason)."""
    digest, size = hashlib.sha256(), 0
    try:
        async with asyncio.timeout(DOWNLOAD_TIMEOUT):
            async with http.stream("GET", ref.url, headers=ref.headers) as r:
                if r.status_code != 200:
                    raise TransferError(f"download failed: HTTP {r.status_code}")
                length = r.headers.get("content-length")
                total = ref.size if ref.size is not None else _int(length)
                async for chunk in r.aiter_bytes(64 * 1024):
                    size += len(chunk)
                    if ref.size is not None and size > ref.size:
                        raise TransferError(f"size mismatch: more than {ref.size} bytes")
                    digest.update(chunk)
                    if progress is not None:
                        await progress(size, total)
    except TimeoutError:
        raise TransferError(f"download timed out after {DOWNLOAD_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise TransferError(f"download failed: {type(exc).__name__}: {exc}") from None
    if ref.size is not None and size != ref.size:
        raise TransferError(f"size mismatch: got {size} bytes, expected {ref.size}")
    got = digest.hexdigest()
    if ref.sha256 is not None and got != ref.sha256:
        raise TransferError(f"sha256 mismatch: got {got}, expected {ref.sha256}")
    return size, got


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class Behaviour:
    latency: float = 0.0
    """Seconds before each answer."""
    failure_rate: float = 0.0
    """Share of requests answered with code 500."""
    flap_interval: float = 0.0
    """Mean seconds between dropped connections (0: never); the gateway then reconnects."""
    event_interval: float = 0.0
    """Mean seconds between unsolicited property events (0: none)."""
    boot_seconds: float = 2.0
    """Seconds away when rebooting (from the dropped connection to the next connect)."""
    reboot_delay: float | None = None
    """Seconds between a reboot's (or import's) answer and the reboot; None: the request's
    ``delay``, else 3 s as Sanji."""
    firmware_failure_rate: float = 0.0
    """Share of firmware upgrades that end with ``FW_UPGRADE_FAIL`` after the download."""
    firmware_seconds: float = 1.0
    """Simulated install time, after the download."""
    will: bool = True
    """Connect with the retained will ``0``. False: a dropped connection leaves the server
    believing the gateway online, as a broker cluster node that dies without publishing its
    clients' wills does (what the server's presence sweep catches)."""


@dataclass
class VirtualGateway:
    uuid: str
    psk: str
    host: str
    port: int
    properties: dict[str, Any] = field(default_factory=dict)
    keepalive: int = 60
    behaviour: Behaviour = field(default_factory=Behaviour)
    use_tls: bool = True
    rng: random.Random = field(default_factory=random.Random)
    http: httpx.AsyncClient | None = None
    """Shared client for downloads (see :func:`download_client`); None: one per download."""

    def __post_init__(self) -> None:
        self.connected = asyncio.Event()
        self.requests = 0
        self.sessions = 0
        """Connections established (announced with ``1``) so far."""
        self.executed: Counter[tuple[str, str]] = Counter()
        """Requests run, once per task_id (a redelivery is answered from the cache)."""
        self.events = 0
        self.failures = 0
        self.flapped = False
        self.reboots = 0
        self.upgrades = 0
        """Firmware upgrades that succeeded (``failed_upgrades``: ended with FW_UPGRADE_FAIL)."""
        self.failed_upgrades = 0
        self.background = Background(REMEMBERED_TASKS)
        """Long jobs (a reboot in its delay, a firmware upgrade), by the task_id of the request
        that started them."""
        self._answers: OrderedDict[str, ResponseMessage] = OrderedDict()
        self._client: aiomqtt.Client | None = None
        self._started = time.monotonic()
        self._outbox: list[bytes] = []
        self._going_down = False  # the session ends because the gateway reboots
        self._serving = False
        self._next_version: str | None = None

    def _topic(self, channel: topics.Channel) -> str:
        return topics.topic(self.uuid, channel)

    async def run(self) -> None:
        """Connect, announce, and answer requests until cancelled or disconnected.

        Returns (without error) when the gateway reboots; only :meth:`serve` brings it back,
        so tests of reboots and firmware use ``serve``. Cancelling ``run`` (outside ``serve``)
        also stops its jobs.
        """
        self._going_down = False
        will = (
            aiomqtt.Will(self._topic(topics.Channel.STATUS), b"0", qos=1, retain=True)
            if self.behaviour.will
            else None
        )
        try:
            async with aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.uuid,
                keepalive=self.keepalive,
                will=will,
                tls_context=psk_client_context(self.uuid, self.psk) if self.use_tls else None,
                clean_session=True,
            ) as client:
                self._client = client
                sock = client._client.socket()  # Nagle off, as the broker has it
                if isinstance(sock, socket.socket):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await client.subscribe(self._topic(topics.Channel.SERVER), qos=1)
                await client.publish(self._topic(topics.Channel.STATUS), b"1", qos=1)
                self.sessions += 1
                self.connected.set()
                try:
                    while self._outbox:
                        await client.publish(
                            self._topic(topics.Channel.CLIENT), self._outbox[0], qos=1
                        )
                        self._outbox.pop(0)
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        await self._answer(client, payload)
                finally:
                    self.connected.clear()
                    self._client = None
        except aiomqtt.MqttError:
            if not self._going_down:
                raise
        except asyncio.CancelledError:
            if not self._serving:
                self.background.stop_others()
            raise

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Stay connected as a real gateway does: reconnect with jittered backoff, flap and
        emit events as ``behaviour`` says, come back ``boot_seconds`` after a reboot, until
        cancelled or ``stop`` is set (which also stops its jobs)."""
        stop = stop or asyncio.Event()
        delay = 1.0
        self._serving = True
        try:
            while not stop.is_set():
                sessions = self.sessions
                session = asyncio.create_task(self.run(), name=f"gw:{self.uuid}:session")
                extras = [asyncio.create_task(self._misbehave(stop))]
                try:
                    await asyncio.wait([session, *extras], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in extras:
                        t.cancel()
                if not session.done():
                    if stop.is_set():
                        await self.go_offline()
                    session.cancel()
                try:
                    await session
                    delay = 1.0
                except aiomqtt.MqttError as exc:
                    if not self.flapped:
                        self.failures += 1
                        log.debug("gateway %s: %s", self.uuid, exc)
                except asyncio.CancelledError:
                    if not stop.is_set() and not self.flapped:
                        raise
                self.flapped = False
                if self._going_down:  # a reboot, not a failure: back after the boot time
                    self._going_down = False
                    pause, delay = self.behaviour.boot_seconds, 1.0
                else:
                    if self.sessions > sessions:
                        delay = 1.0  # it was connected: a lost connection starts afresh
                    pause = delay * self.rng.uniform(0.5, 1.5)
                    delay = min(delay * 2, 60.0)
                if not stop.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), pause)
                    except TimeoutError:
                        pass
        finally:
            self._serving = False
            tasks = self.background.stop_others()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _misbehave(self, stop: asyncio.Event) -> None:
        """Ends when the session should end: ``stop`` set, or a flap is due."""
        b, loop = self.behaviour, asyncio.get_running_loop()
        await self.connected.wait()
        never = float("inf")
        flap_at = (
            loop.time() + self.rng.expovariate(1 / b.flap_interval) if b.flap_interval else never
        )
        event_at = (
            loop.time() + self.rng.expovariate(1 / b.event_interval) if b.event_interval else never
        )
        while True:
            wake = min(flap_at, event_at, loop.time() + 3600)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))
                return
            except TimeoutError:
                pass
            now = loop.time()
            if now >= flap_at:
                self.flapped = True
                self.crash()
                return
            if now >= event_at:
                event_at = now + self.rng.expovariate(1 / b.event_interval)
                value = round(self.rng.uniform(0, 100), 1)
                try:
                    await self.emit("put", "/system/properties/cpuUsage", value)
                except (aiomqtt.MqttError, RuntimeError):
                    return
                self.events += 1

    @property
    def cancelled(self) -> int:
        """Jobs stopped by ``delete /system/tasks/{task_id}``."""
        return self.background.cancelled

    @property
    def jobs(self) -> dict[str, JobState]:
        """Long jobs still running, by the task_id of the request that started them."""
        return self.background.task_ids()

    # --- requests ------------------------------------------------------------------------------

    async def _answer(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            request = decode_request(payload)
        except MessageError as exc:
            log.warning("gateway %s: rejected request: %s", self.uuid, exc.message)
            refused = refusal(payload, exc.message, SIGN, self.rng)
            if refused is not None:
                await client.publish(
                    self._topic(topics.Channel.CLIENT), encode_response(refused), qos=1
                )
            return
        self.requests += 1
        response = self._answers.get(request.task_id)
        jobs: list[Job] = []
        if response is None:
            if self.behaviour.latency:
                await asyncio.sleep(self.behaviour.latency)
            outcome = await self.execute(request)
            response, jobs = outcome.response, outcome.deferred
            self.executed[(request.method, request.resource)] += 1
            self._answers[request.task_id] = response
            if len(self._answers) > REMEMBERED_TASKS:
                self._answers.popitem(last=False)
        try:
            await client.publish(
                self._topic(topics.Channel.CLIENT), encode_response(response), qos=1
            )
        finally:  # started once the answer is out (or lost with the connection), never before
            kind = request.resource.split("?")[0]
            for job in jobs:
                name = f"gw:{self.uuid}:{kind}:{request.task_id}"
                self.background.spawn(job(), name=name, task_id=request.task_id)

    async def execute(self, request: RequestMessage) -> Outcome:
        """The answer to ``request`` by the shared handlers, with this gateway as their host
        (or a simulated failure), and the jobs to start once it is sent."""
        if self.rng.random() < self.behaviour.failure_rate:
            failure = respond(request, 500, {"message": "simulated failure"}, SIGN, self.rng)
            return Outcome(failure, [])
        return await ROUTER.answer(request, self._call, SIGN, self.rng)

    async def _call(self, route: HostRoute[GatewayHost], request: Request) -> Reply:
        return await route.handler(self, request)

    # --- the host of the shared handlers (edgefleet.gateway.host) ------------------------------

    progress_every = 25
    progress_start = 0

    def answered(self, task_id: str) -> bool:
        return task_id in self._answers

    def system_properties(self) -> dict[str, Any]:
        return self.properties

    async def system_status(self) -> dict[str, Any]:
        return {
            "hostname": f"sim-{self.uuid[:8]}",
            "version": self.properties.get("softwareVersion", ""),
            "uptimeSec": max(0, int(time.monotonic() - self._started)),
            "cpuUsage": round(self.rng.uniform(1, 30), 1),
            "memoryUsage": round(self.rng.uniform(20, 60), 1),
        }

    def reboot_delay(self, asked: float | None) -> float:
        if self.behaviour.reboot_delay is not None:
            return self.behaviour.reboot_delay
        return SANJI_REBOOT_DELAY if asked is None else asked

    def reboot_accepted(self, delay: float) -> dict[str, Any]:
        return {}  # as Sanji

    async def fetch_firmware(self, ref: FileRef, progress: Progress) -> Fetched:
        size, digest = await self._fetch(ref, progress)
        return Fetched(size, digest)

    async def install_firmware(self, got: Fetched, task_id: str) -> dict[str, Any]:
        await asyncio.sleep(self.behaviour.firmware_seconds)
        if self.rng.random() < self.behaviour.firmware_failure_rate:
            raise TransferError("simulated install failure")
        return {}

    def firmware_ended(self, result: dict[str, Any]) -> None:
        if result["code"] != SUCCESS:
            self.failed_upgrades += 1
            return
        self.upgrades += 1
        self._next_version = result["version"] or self._next_version

    def firmware_reboot_delay(self) -> float | None:
        return 0.0

    async def import_config(
        self, ref: FileRef, scopes: list[str]
    ) -> tuple[dict[str, Any], float | None]:
        try:
            size, digest = await self._fetch(ref)
        except TransferError as exc:
            raise HandlerError(400, exc.message) from None
        return {"scopes": scopes, "size": size, "sha256": digest}, self.reboot_delay(None)

    async def _fetch(self, ref: FileRef, progress: Progress | None = None) -> tuple[int, str]:
        if self.http is not None:
            return await fetch(self.http, ref, progress)
        async with download_client(1) as http:
            return await fetch(http, ref, progress)

    async def reboot(self) -> None:
        """Reboot now: stop every other job, say ``REBOOTING``, drop the connection without
        DISCONNECT (the broker publishes the will ``0``); :meth:`serve` comes back after
        ``boot_seconds`` with the version a firmware upgrade installed."""
        self.reboots += 1
        await asyncio.gather(*self.background.stop_others(), return_exceptions=True)
        await self.report("put", "/system/reboot", {"code": "REBOOTING"})
        self._outbox.clear()  # what was not sent is lost with the reboot
        if self._next_version is not None:
            self.properties["softwareVersion"] = self._next_version
            self._next_version = None
        self._started = time.monotonic() + self.behaviour.boot_seconds
        if self._client is not None:
            self._going_down = True
            self.crash()

    # --- publishing ----------------------------------------------------------------------------

    async def report(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """An event of a job: published now, or kept for the next connection."""
        event = EventMessage(
            method=method, resource=resource, data=data, code=code, event_id=new_event_id()
        )
        payload = encode(event)
        client = self._client
        if client is not None:
            try:
                await client.publish(self._topic(topics.Channel.CLIENT), payload, qos=1)
                return
            except aiomqtt.MqttError:
                pass
        if len(self._outbox) < OUTBOX_LIMIT:
            self._outbox.append(payload)

    async def emit(self, method: str, resource: str, data: Any, code: int = 200) -> None:
        """Publish an unsolicited event (e.g. ``put /system/properties/defaultRoute``)."""
        if self._client is None:
            raise RuntimeError("not connected")
        prefix = "/system/properties/"
        if method == "put" and resource.startswith(prefix):  # its own state changes first
            value = data["data"] if isinstance(data, dict) and set(data) == {"data"} else data
            self.properties[resource[len(prefix) :]] = value
        event = EventMessage(
            method=method, resource=resource, data=data, code=code, event_id=new_event_id()
        )
        await self._client.publish(self._topic(topics.Channel.CLIENT), encode(event), qos=1)

    async def go_offline(self) -> None:
        """A clean shutdown: say ``0`` (retained), then disconnect."""
        if self._client is not None:
            await self._client.publish(self._topic(topics.Channel.STATUS), b"0", qos=1, retain=True)

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        if self._client is not None:
            sock = self._client._client.socket()
            if isinstance(sock, socket.socket):
                sock.shutdown(socket.SHUT_RDWR)
