"""A Mosquitto node of the broker tier (issue 20): one of N independent brokers behind the
TCP load balancer, kept in step with the server with no database and no hand edits.

``edgefleet broker-node`` runs this on each node. It writes the node's configuration with the
embedded broker's writers (brokers/mosquitto.py: TLS-PSK listener with identity = username =
client id, the ACL pattern, the server's password file hashed by ``mosquitto_passwd``), then
keeps the PSK store equal to the server's by asking ``GET /api/v1/broker/psk-file``:

- every key once (with its ETag and cursor), then every ``sync_seconds`` only what changed
  since the cursor of the last answer (``?since=<cursor>``: usually one header line);
- every ``full_seconds`` the whole file again, with the ETag of the last one in
  ``If-None-Match``: 304 while nothing differs, so the check costs no transfer;
- a store that changed is written whole (temporary name, rename) and Mosquitto is signalled
  (SIGHUP; we wait until it logs the reload). Nothing changed: no write, no signal;
- Mosquitto re-reads its PSK file on SIGHUP but keeps the sessions it has: a gateway whose key
  was deleted or replaced would stay connected (its ACL still confines it to its own topics).
  So its session is then closed by taking over its client id on the server listener, as the
  embedded broker does (with the node's own user, whose random password is made at each
  start); its reconnection meets the new store and fails;
- the server unreachable, or refusing the token: the last store is kept (and served by
  Mosquitto), the node retries with a growing, jittered delay, and logs once per change of
  state. A node restarted meanwhile starts from the store it wrote last.

Mosquitto's log (a line per connection) is moved aside past ``log_max_bytes`` and the broker
signalled to open a new one, so a node that runs for months does not fill its disk.

With ``run_broker`` the node also starts Mosquitto, restarts it when it exits and stops it on
SIGTERM, so one service (systemd unit, container command) is the whole node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import shutil
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from edgefleet.brokers import mosquitto
from edgefleet.brokers.files import render_psk, write_private
from edgefleet.errors import EdgefleetError
from edgefleet.processes import raise_fd_limit
from edgefleet.settings import MQTTSettings

log = logging.getLogger(__name__)

PSK_FILE_PATH = "/api/v1/broker/psk-file"
NODES_PATH = "/api/v1/broker/nodes"
RELOADED = b"Reloading config."
"""What Mosquitto logs (level "information") when a SIGHUP makes it re-read its files."""
RELOAD_WAIT = 5.0
HTTP_TIMEOUT = 10.0
KICKER = "edgefleet-node"
"""The node's own MQTT user, with which it closes revoked gateways' sessions; the ACL gives it
no gateway's topics."""
_HEX = frozenset("0123456789abcdefABCDEF")
_IDENTITY = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""What a PSK identity (a device uuid) is written with: nothing Mosquitto's psk_file or an
MQTT client id would take otherwise (no ':', '#', '/', space or control character)."""


class BrokerNodeError(EdgefleetError):
    pass


class SyncAnswerError(BrokerNodeError):
    """The server's answer is not a key file this node understands (kept: the last store)."""


@dataclass(frozen=True)
class NodeConfig:
    """One node: where its files are, its listeners, the server it follows."""

    server_url: str
    token: str
    directory: Path
    mqtt: MQTTSettings
    server_password: str = ""
    """The server's MQTT password, hashed into the password file by mosquitto_passwd; or"""
    server_password_hash: str = ""
    """its hash made elsewhere by mosquitto_passwd (``$7$…``): the node never holds the
    password itself. One of the two."""
    sync_seconds: float = 5.0
    full_seconds: float = 600.0
    max_retry_seconds: float = 60.0
    log_max_bytes: int = 64 * 1024 * 1024
    """Mosquitto's log (a line per connection) is rotated past this size: one old file kept."""
    name: str = ""
    """The node's name in the tier (``[a-z0-9-]``; its host name, an instance id)."""
    advertise: str = ""
    """``host:port`` where the servers reach this node's server listener: when set, the node
    registers itself at every sync (``PUT /api/v1/broker/nodes/<name>``), so servers with
    ``mqtt.node_registration`` find it with no list to keep, and withdraws on SIGTERM."""

    @property
    def files(self) -> mosquitto.MosquittoFiles:
        return mosquitto.MosquittoFiles(self.directory)


def _key_line(line: str) -> tuple[str, str]:
    identity, sep, key = line.partition(":")
    if not sep or not key or not _HEX.issuperset(key) or len(key) % 2:
        raise SyncAnswerError(f"not an identity:hex line ({len(line)} characters)")
    if not _IDENTITY.fullmatch(identity):
        raise SyncAnswerError(f"not a PSK identity ({len(identity)} characters)")
    return identity, key


def parse_psk_file(text: str) -> dict[str, str]:
    """Mosquitto's ``psk_file`` (``identity:hex`` lines), as the server serves it and as this
    node writes it."""
    return dict(_key_line(line) for line in text.splitlines() if line)


@dataclass(frozen=True)
class KeySyncAnswer:
    """An answer to ``?since=``: its cursor, whether it lists every key, the keys set and the
    identities removed."""

    cursor: int
    full: bool
    keys: dict[str, str]
    removed: frozenset[str]


def parse_sync(text: str) -> KeySyncAnswer:
    """``# cursor=<n> full|changes`` then ``identity:hex`` and ``-identity`` lines
    (docs/protocol.md, "Keeping a copy of the keys")."""
    head, _, rest = text.partition("\n")
    words = head.split()
    if (
        len(words) != 3
        or words[0] != "#"
        or not words[1].startswith("cursor=")
        or not words[1][len("cursor=") :].isdigit()
        or words[2] not in ("full", "changes")
    ):
        raise SyncAnswerError("the answer does not start with '# cursor=<n> full|changes'")
    keys: dict[str, str] = {}
    removed: set[str] = set()
    for line in rest.splitlines():
        if not line:
            continue
        if line.startswith("-"):
            if words[2] == "full" or not _IDENTITY.fullmatch(line[1:]):
                raise SyncAnswerError("a removal line in a full answer, or one with no identity")
            removed.add(line[1:])
            keys.pop(line[1:], None)
        else:
            identity, key = _key_line(line)
            keys[identity] = key
            removed.discard(identity)
    return KeySyncAnswer(
        int(words[1][len("cursor=") :]), words[2] == "full", keys, frozenset(removed)
    )


@dataclass(frozen=True)
class StoreChange:
    """What an answer changed: anything at all, and the identities whose key is gone or
    replaced (their sessions are to be closed)."""

    changed: bool
    gone: frozenset[str]


class KeyStore:
    """The node's copy of the gateway keys, and what each answer changes in it."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys: dict[str, str] = dict(keys or {})

    def replace(self, keys: dict[str, str]) -> StoreChange:
        """Take ``keys`` as the whole store."""
        gone = frozenset(i for i, k in self.keys.items() if keys.get(i) != k)
        changed = bool(gone) or not set(keys) <= set(self.keys)
        self.keys = dict(keys)
        return StoreChange(changed, gone)

    def apply(self, answer: KeySyncAnswer) -> StoreChange:
        """Apply an answer: every key (``full``) or the changes since the last one."""
        if answer.full:
            return self.replace(answer.keys)
        gone = {i for i in answer.removed if i in self.keys}
        gone |= {i for i, k in answer.keys.items() if i in self.keys and self.keys[i] != k}
        added = any(i not in self.keys for i in answer.keys)
        for identity in answer.removed:
            self.keys.pop(identity, None)
        self.keys.update(answer.keys)
        return StoreChange(bool(gone) or added, frozenset(gone))

    def text(self) -> str:
        """The store as Mosquitto's ``psk_file``, sorted by identity."""
        return render_psk(sorted(self.keys.items()))


def server_hash(passwd_text: str, username: str) -> str:
    """The hash of ``username`` in a Mosquitto password file (``user:$7$…`` lines made by
    ``mosquitto_passwd``)."""
    for line in passwd_text.splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user == username:
            if not hashed.startswith(("$6$", "$7$")):
                raise BrokerNodeError(
                    f"the password file's line for {username} is not a mosquitto_passwd hash"
                )
            return hashed
    raise BrokerNodeError(f"the password file has no line for {username}")


def find_mosquitto() -> str:
    path = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise BrokerNodeError("mosquitto not found: install Debian's mosquitto package")
    return path


class BrokerNode:
    """The node's configuration, its key sync loop and (``run_broker``) its Mosquitto."""

    def __init__(self, config: NodeConfig, *, run_broker: bool = False) -> None:
        self.config = config
        self.files = config.files
        self.run_broker = run_broker
        self.store = KeyStore()
        self.cursor: int | None = None
        self.etag = ""
        self._last_full = -float("inf")
        self._state = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._listening = False
        self._stopping = asyncio.Event()
        self._tried = asyncio.Event()
        """Set after the first attempt to sync: the broker starts with what it gave."""
        self._unwritten = False
        """The store holds changes not yet in the file (a write or reload that failed)."""
        self._kick: set[str] = set()
        """Gateways whose sessions are still to be closed."""
        self._kicker_password = secrets.token_urlsafe(32)
        """The node's own user on the server listener, to close sessions (made anew at each
        start, never shown): the node need not know the server's password."""

    # --- configuration ----------------------------------------------------------------

    def write_config(self) -> None:
        """Write mosquitto.conf, the ACL and the password file; keep the PSK store a
        previous run left (the server may be unreachable now), else start with none."""
        try:
            kept = parse_psk_file(self.files.psk.read_text())
        except FileNotFoundError:
            kept = {}
        except (OSError, SyncAnswerError) as exc:
            log.warning("ignoring the PSK store left in %s: %s", self.files.psk, exc)
            kept = {}
        self.store = KeyStore(kept)
        cfg = self.config
        mosquitto.write_all(self.files, cfg.mqtt, None, sorted(kept.items()))
        plain = {KICKER: self._kicker_password}
        hashed = {}
        if cfg.server_password_hash:
            hashed[cfg.mqtt.server_username] = cfg.server_password_hash
        else:
            plain[cfg.mqtt.server_username] = cfg.server_password
        mosquitto.write_passwd(self.files, plain, hashed)
        if kept:
            log.info("starting with the %d gateway key(s) kept from the last run", len(kept))

    # --- key sync ---------------------------------------------------------------------

    def _report(self, state: str, message: str, *args: object) -> None:
        """Log once per change of state, not once per attempt."""
        if state != self._state:
            self._state = state
            (log.info if state == "ok" else log.warning)(message, *args)

    async def sync_once(self, client: httpx.AsyncClient) -> bool:
        """Register (when advertised), ask the server once for the keys and apply its
        answer; whether the store changed. A refused registration (a name in use, an address
        not allowed) is raised after the keys are synced: it must not leave them stale."""
        headers = {"mx-api-token": self.config.token}
        refused: BrokerNodeError | None = None
        if self.config.advertise:
            try:
                await self.register(client)
            except BrokerNodeError as exc:  # the keys are still to be followed
                refused = exc
        changed = await self._sync_keys(client, headers)
        if refused is not None:
            raise refused
        return changed

    async def _sync_keys(self, client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
        loop = asyncio.get_running_loop()
        if self.cursor is None or loop.time() - self._last_full >= self.config.full_seconds:
            if self.etag:
                headers["If-None-Match"] = self.etag
            r = await client.get(PSK_FILE_PATH, headers=headers)
            if r.status_code == 304:
                self._last_full = loop.time()
                self.cursor = _cursor(r)
                return False
            _check(r)
            change = self.store.replace(parse_psk_file(r.text))
            self.etag = r.headers.get("etag", "")
            self.cursor = _cursor(r)
            self._last_full = loop.time()
        else:
            r = await client.get(PSK_FILE_PATH, params={"since": self.cursor}, headers=headers)
            _check(r)
            answer = parse_sync(r.text)
            change = self.store.apply(answer)
            self.cursor = answer.cursor
        self._kick |= change.gone
        if not (change.changed or self._unwritten):
            return False
        self._unwritten = True  # until written and signalled: retried at the next answer
        try:
            await asyncio.to_thread(
                write_private, self.files.psk, self.store.text(), user=mosquitto.BROKER_USER
            )
            reloaded = await self.reload()
        except OSError as exc:
            raise BrokerNodeError(f"could not write {self.files.psk}: {exc.strerror}") from exc
        self._unwritten = False
        log.info("PSK store updated: %d gateway key(s)", len(self.store.keys))
        kick, self._kick = sorted(self._kick), set()
        if reloaded and kick:  # no broker running: no sessions to close
            await self.kick(kick)
        return True

    async def sync_forever(self) -> None:
        """Follow the server until :meth:`stop`; a failure keeps the last store and retries."""
        cfg = self.config
        failures = 0
        async with httpx.AsyncClient(base_url=cfg.server_url, timeout=HTTP_TIMEOUT) as client:
            while not self._stopping.is_set():
                try:
                    if not await self._unless_stopped(self.sync_once(client)):
                        break
                except httpx.HTTPError as exc:
                    failures += 1
                    self._report(
                        "unreachable",
                        "cannot reach the server at %s (%s); keeping the %d key(s) held, retrying",
                        cfg.server_url,
                        _describe(exc),
                        len(self.store.keys),
                    )
                except BrokerNodeError as exc:
                    failures += 1
                    self._report(
                        "refused",
                        "the server's key file could not be used: %s; keeping the %d key(s) "
                        "held, retrying",
                        exc.message,
                        len(self.store.keys),
                    )
                else:
                    failures = 0
                    self._report(
                        "ok",
                        "in sync with %s: %d gateway key(s)",
                        cfg.server_url,
                        len(self.store.keys),
                    )
                self._tried.set()
                self.rotate_log()
                delay = cfg.sync_seconds
                if failures:
                    delay = min(cfg.max_retry_seconds, cfg.sync_seconds * 2 ** min(failures, 16))
                    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def register(self, client: httpx.AsyncClient) -> None:
        """Tell the servers this node is up and where to reach it (again: they drop a node
        that stops saying so)."""
        cfg = self.config
        r = await client.put(
            f"{NODES_PATH}/{cfg.name}",
            json={"address": cfg.advertise},
            headers={"mx-api-token": cfg.token},
        )
        if r.status_code in (400, 409, 422):  # a bad or disallowed address, a name in use
            raise BrokerNodeError(f"the server refused this node's registration: {r.text[:200]}")
        _check(r)

    async def withdraw(self) -> None:
        """Tell the servers this node is going (on SIGTERM): they stop sending to it at once
        instead of after the registration expires. Best effort."""
        cfg = self.config
        try:
            async with httpx.AsyncClient(base_url=cfg.server_url, timeout=3.0) as client:
                await client.delete(f"{NODES_PATH}/{cfg.name}", headers={"mx-api-token": cfg.token})
        except httpx.HTTPError as exc:
            log.warning("could not withdraw the node's registration: %s", _describe(exc))

    async def _unless_stopped(self, work: Coroutine[Any, Any, object]) -> bool:
        """Run ``work`` unless :meth:`stop` comes first (then cancel it: a server that does not
        answer must not hold up SIGTERM); whether it ran to its end."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False
        task.result()
        return True

    # --- the broker -------------------------------------------------------------------

    def _pid(self) -> int | None:
        """The broker to signal: ours once it listens (a SIGHUP before Mosquitto has set its
        handler would end it), else the one the pid file names."""
        if self.run_broker:
            proc = self._proc
            ok = proc is not None and proc.returncode is None and self._listening
            return proc.pid if ok and proc is not None else None
        try:
            return int(self.files.pid.read_text().strip())
        except (OSError, ValueError):
            return None

    async def reload(self) -> bool:
        """SIGHUP the broker and wait (at most ``RELOAD_WAIT`` s) until it logs the reload;
        False when no broker runs from this configuration."""
        pid = self._pid()
        if pid is None:
            return False
        log_file = self.files.log
        offset = log_file.stat().st_size if log_file.exists() else 0
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELOAD_WAIT
        while loop.time() < deadline:
            await asyncio.sleep(0.02)
            with contextlib.suppress(OSError), log_file.open("rb") as f:
                f.seek(offset)
                if RELOADED in f.read():
                    return True
        log.warning("Mosquitto did not confirm the reload within %.0f s", RELOAD_WAIT)
        return True

    def rotate_log(self) -> bool:
        """Past ``log_max_bytes``, move Mosquitto's log to ``<log>.1`` (replacing the one there)
        and signal the broker, which opens a new one on SIGHUP; whether it did."""
        log_file = self.files.log
        try:
            if log_file.stat().st_size <= self.config.log_max_bytes:
                return False
        except FileNotFoundError:
            return False
        pid = self._pid()
        if pid is None:
            return False
        try:
            log_file.replace(log_file.with_name(log_file.name + ".1"))
            os.kill(pid, signal.SIGHUP)
        except (OSError, ProcessLookupError) as exc:
            log.warning("could not rotate %s: %s", log_file, exc)
            return False
        log.info("rotated %s (kept as %s.1)", log_file, log_file.name)
        return True

    async def kick(self, identities: list[str]) -> None:
        """Close the sessions of gateways whose key is gone or replaced: a connection with
        their client id on the server listener takes their session over and ends it."""
        mqtt = self.config.mqtt
        for identity in identities:
            try:
                async with aiomqtt.Client(
                    _local(mqtt.server_host),
                    mqtt.server_port,
                    username=KICKER,
                    password=self._kicker_password,
                    identifier=identity,
                    clean_session=True,
                    timeout=5,
                ):
                    pass
            except aiomqtt.MqttError as exc:
                log.warning("could not close the session of gateway %s: %s", identity, exc)
            else:
                log.info("closed the session of gateway %s (its key is gone or replaced)", identity)

    async def _spawn(self, binary: str) -> None:
        self._listening = False
        proc = self._proc = await asyncio.create_subprocess_exec(
            binary, "-c", str(self.files.conf), preexec_fn=raise_fd_limit
        )
        mqtt = self.config.mqtt
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline and proc.returncode is None:
            try:
                _, writer = await asyncio.open_connection(
                    _local(mqtt.server_host), mqtt.server_port
                )
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            self._listening = True
            log.info(
                "Mosquitto started (pid %d): gateways on %s:%d, servers on %s:%d",
                proc.pid,
                mqtt.gateway_host,
                mqtt.gateway_port,
                mqtt.server_host,
                mqtt.server_port,
            )
            return
        log.error("Mosquitto did not listen within 10 s (see %s)", self.files.log)

    async def supervise(self) -> None:
        """Run Mosquitto until :meth:`stop`, restarting it (with a growing delay) when it
        exits; then stop it."""
        binary = find_mosquitto()
        if not await self._unless_stopped(self._tried.wait()):
            return
        delay = 0.5
        try:
            while not self._stopping.is_set():
                await self._spawn(binary)
                proc = self._proc
                assert proc is not None
                started = asyncio.get_running_loop().time()
                if not await self._unless_stopped(proc.wait()):
                    break
                if asyncio.get_running_loop().time() - started > 30:
                    delay = 0.5
                log.error(
                    "Mosquitto exited with %s (see %s); restarting in %.1f s",
                    proc.returncode,
                    self.files.log,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 30)
        finally:
            await self._terminate()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("Mosquitto stopped")

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Write the configuration, then sync (and supervise the broker) until :meth:`stop`
        or SIGTERM/SIGINT."""
        await asyncio.to_thread(self.write_config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            if self.run_broker:
                await asyncio.gather(self.supervise(), self.sync_forever())
            else:
                await self.sync_forever()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self.config.advertise:
                await self.withdraw()


def _local(host: str) -> str:
    """Where this host reaches a listener bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _check(r: httpx.Response) -> None:
    if r.status_code in (401, 403):
        raise BrokerNodeError(
            f"the server refused the broker token (HTTP {r.status_code}): is it a "
            "broker-scope token, not revoked or expired?"
        )
    if r.status_code != 200:
        raise BrokerNodeError(f"the server answered HTTP {r.status_code}")


def _cursor(r: httpx.Response) -> int:
    value = r.headers.get("x-edgefleet-cursor", "")
    if not value.isdigit():
        raise SyncAnswerError("the answer has no X-Edgefleet-Cursor header")
    return int(value)


def _describe(exc: httpx.HTTPError) -> str:
    """The failure without the request (its headers hold the token)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
