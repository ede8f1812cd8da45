"""The embedded broker: a Mosquitto that ``edgefleet serve`` configures, starts and supervises.

Its files are generated at every start into a private temporary directory (owned by the
``mosquitto`` user when we run as root, since Mosquitto drops to it), so nothing there needs
to survive a restart. The keys come from the server's key cache (services/keys.py), which
follows registrations, new keys and deletions made here, by another server instance or by a
CLI command. After a change the PSK store is rewritten and the broker reloaded (SIGHUP): at
once after a quiet spell, then at most once every ``REWRITE_SECONDS`` however many gateways
are registered meanwhile, rendered and written in a worker thread (100,000 keys are 10 MB).
A gateway whose key was deleted or replaced and that is still connected is kicked by taking
over its client id on the server listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiomqtt
from prometheus_client import Counter

from edgefleet.brokers import mosquitto
from edgefleet.brokers.files import write_private
from edgefleet.errors import EdgefleetError
from edgefleet.pki import TlsMaterial
from edgefleet.processes import die_with_parent, raise_fd_limit
from edgefleet.settings import MQTTSettings
from edgefleet.workers import Worker, Workers

log = logging.getLogger(__name__)

PskSource = Callable[[], Awaitable[str]]
TlsSource = Callable[[], Awaitable[TlsMaterial]]
CrlSource = Callable[[], Awaitable[str]]

REWRITE_SECONDS = 1.0
"""The PSK store is rewritten at most this often (a burst of registrations makes one)."""
RETRY_SECONDS = 2.0

REWRITES = Counter(
    "edgefleet_embedded_broker_key_rewrites_total",
    "Times the embedded broker's PSK store was rewritten and reloaded",
)


class EmbeddedBrokerError(EdgefleetError):
    pass


def _prepare_child() -> None:
    """In the child before exec: SIGTERM the broker if the server dies, even by SIGKILL (lost
    when Mosquitto drops root privileges: the pid record below covers that), and let it hold
    as many connections as the hard open-file limit allows (a soft limit of 1024 is common)."""
    die_with_parent(signal.SIGTERM)
    raise_fd_limit()


def _stop_orphans(record: Path) -> None:
    """Stop the brokers an earlier server of this data directory left running: killed hard
    while Mosquitto ran as another user (which clears the parent-death signal), its broker
    holds the ports. Found by ``record`` (which that server wrote) and, should the record be
    gone, in /proc by the configuration path, which names the data directory (a digest) and
    the server's pid. Only a Mosquitto whose parent is no longer that server is stopped: a
    live server's broker, and any other process, are left alone."""
    live = False
    recorded = _read_record(record)
    for pid, conf, server in {*recorded, *_brokers_in_proc(record.parent)}:
        live |= not _stop_if_orphaned(pid, conf, server)
    if recorded and not live:
        record.unlink(missing_ok=True)


def _read_record(record: Path) -> list[tuple[int, str, int]]:
    try:
        info = json.loads(record.read_text())
        return [(int(info["pid"]), str(info["conf"]), int(info["server"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _data_dir_tag(data_dir: Path) -> str:
    """A short digest of the data directory, put in the broker's configuration path."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def _brokers_in_proc(data_dir: Path) -> list[tuple[int, str, int]]:
    """Every running ``mosquitto -c <tmp>/edgefleet-broker-<tag>-<server>-…/mosquitto.conf``
    of this data directory, as (pid, configuration, server pid)."""
    name = re.compile(rf"{re.escape(TMP_PREFIX)}{_data_dir_tag(data_dir)}-(\d+)-[^/]*")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if len(argv) < 3 or Path(os.fsdecode(argv[0])).name != "mosquitto" or argv[1] != b"-c":
            continue
        conf = Path(os.fsdecode(argv[2]))
        match = name.fullmatch(conf.parent.name)
        if match and conf.name == "mosquitto.conf":
            found.append((int(entry.name), str(conf), int(match.group(1))))
    return found


def _stop_if_orphaned(pid: int, conf: str, server: int) -> bool:
    """Stop broker ``pid`` (started with ``conf`` by ``server``) unless that server is still
    its parent; False when it was left running for its live server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
        parent = int(status.split("PPid:", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        cmdline, parent = [], 0
    if parent == server:
        return False  # its server still runs (the port check says so clearly)
    if conf.encode() in cmdline:
        log.warning("stopping the embedded Mosquitto (pid %d) an earlier server left", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                time.sleep(0.1)
                if _ended(pid):
                    break
            else:
                os.kill(pid, signal.SIGKILL)
    directory = Path(conf).parent
    if directory.name.startswith(TMP_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
    return True


def _ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped (a container's init may never)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


TMP_PREFIX = "edgefleet-broker-"
RELOADED = b"Reloading config."
"""What Mosquitto logs (level "information") when a SIGHUP makes it re-read its files."""
RELOAD_WAIT = 5.0


def _find_mosquitto() -> str:
    path = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise EmbeddedBrokerError(
            "the embedded broker needs Mosquitto: install Debian's mosquitto package "
            "(`make run` does), or set EDGEFLEET_MQTT__EMBEDDED=false and point "
            "EDGEFLEET_MQTT__SERVER_HOST/PORT at your broker"
        )
    return path


def _check_free(host: str, port: int, what: str, setting: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise EmbeddedBrokerError(
                f"port {port} on {host} for the {what} is busy; choose another with "
                f"EDGEFLEET_MQTT__{setting}"
            ) from exc


class EmbeddedMosquitto:
    def __init__(
        self,
        mqtt: MQTTSettings,
        server_password: str,
        psks: PskSource,
        tls: TlsSource | None = None,
        crl: CrlSource | None = None,
        record: Path | None = None,
        workers: Workers | None = None,
    ) -> None:
        """``psks``: the PSK file's text now (from the key cache); the owner calls
        :meth:`keys_changed` after each change. ``record``: where the running broker's pid is
        kept (in the data directory), so a broker orphaned by a hard kill of the server is
        stopped at the next start. ``workers``: the supervisor its watchers run under (the
        server's)."""
        self.mqtt = mqtt
        self.record = record
        self.password = server_password
        self.psks = psks
        self.tls = tls
        self.crl = crl
        self._kick: set[str] = set()
        self.rewrites = 0
        self.files: mosquitto.MosquittoFiles | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.workers = workers if workers is not None else Workers()
        self._watchers: list[Worker] = []
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        self._synced.set()
        self.restarts = 0
        self._recorded = False

    async def start(self) -> None:
        binary = _find_mosquitto()
        if self.record is not None:
            await asyncio.to_thread(_stop_orphans, self.record)
        m = self.mqtt
        _check_free(m.gateway_host, m.gateway_port, "gateway listener (TLS-PSK)", "GATEWAY_PORT")
        _check_free(m.server_host, m.server_port, "server listener (MQTT)", "SERVER_PORT")
        if m.cert_port:
            _check_free(m.gateway_host, m.cert_port, "certificate listener", "CERT_PORT")
        tls = await self.tls() if self.mqtt.cert_port and self.tls is not None else None
        prefix = TMP_PREFIX
        if self.record is not None:  # so that a broker it orphans can be told by its command
            prefix += f"{_data_dir_tag(self.record.parent)}-{os.getpid()}-"
        self.files = mosquitto.MosquittoFiles(Path(tempfile.mkdtemp(prefix=prefix)))
        text = await self.psks()
        files = self.files

        def write() -> None:
            mosquitto.write_all(files, self.mqtt, self.password, [], tls)
            write_private(files.psk, text, user=mosquitto.BROKER_USER)

        await asyncio.to_thread(write)
        await self._spawn(binary)
        start = self.workers.start
        self._watchers = [
            start("embedded-broker", lambda: self._supervise(binary)),
            start("embedded-broker-sync", self._sync),
        ]
        log.info(
            "embedded Mosquitto: gateways on %s:%d (TLS-PSK), server on %s:%d",
            self.mqtt.gateway_host,
            self.mqtt.gateway_port,
            self.mqtt.server_host,
            self.mqtt.server_port,
        )

    async def _spawn(self, binary: str) -> None:
        assert self.files is not None
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(self.files.conf),
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_prepare_child,
        )
        if self.record is not None:
            self.record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._recorded = True
            write_private(
                self.record,
                json.dumps(
                    {"pid": self._proc.pid, "conf": str(self.files.conf), "server": os.getpid()}
                ),
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise EmbeddedBrokerError(f"mosquitto exited at start; see {self.files.log}")
            try:
                _, writer = await asyncio.open_connection(
                    self.mqtt.server_host, self.mqtt.server_port
                )
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise EmbeddedBrokerError("mosquitto did not listen within 10 s")

    async def _supervise(self, binary: str) -> None:
        """Restart the broker if it dies (gateways and the server reconnect by themselves)."""
        delay = 0.5
        while True:
            await asyncio.sleep(0.5)
            if self._proc is not None and self._proc.returncode is not None:
                log.error("embedded Mosquitto exited with %s; restarting", self._proc.returncode)
                await asyncio.sleep(delay)
                try:
                    await self._spawn(binary)
                    self.restarts += 1
                    delay = 0.5
                except EmbeddedBrokerError as exc:
                    log.error("restart failed: %s", exc.message)
                    delay = min(delay * 2, 30)

    def keys_changed(self, _changed: Sequence[str] = (), revoked: Sequence[str] = ()) -> None:
        """Gateway keys were set or removed: rewrite the PSK store soon (coalesced), then close
        the sessions of the gateways in ``revoked`` (their key was deleted or replaced)."""
        self._kick.update(revoked)
        self._synced.clear()
        self._dirty.set()

    async def reloaded(self) -> None:
        """Wait until the broker has re-read every key change made so far."""
        await self._synced.wait()

    async def _sync(self) -> None:
        """Rewrite and reload after each burst of changes, at most once every
        ``REWRITE_SECONDS`` (what arrives meanwhile goes into the next rewrite). A reload
        that failed is tried again (here after an I/O error; after anything else by the
        supervisor's restart of this loop), so ``reloaded`` waiters are not left waiting for
        the next change, and the gateways to disconnect are kept for it."""
        if not self._synced.is_set():
            self._dirty.set()
        loop = asyncio.get_running_loop()
        last = -REWRITE_SECONDS
        while True:
            await self._dirty.wait()
            pause = last + REWRITE_SECONDS - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # what arrives meanwhile goes into this rewrite
            last = loop.time()
            self._dirty.clear()
            kick, self._kick = self._kick, set()
            try:
                await self.reload()
            except (EdgefleetError, OSError) as exc:
                log.warning("could not reload the embedded broker: %s; retrying", exc)
                self._kick |= kick
                self._dirty.set()
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except BaseException:
                self._kick |= kick
                self._dirty.set()
                raise
            if kick:
                await self.kick(sorted(kick))
            if not self._dirty.is_set():
                self._synced.set()

    async def reload(self) -> None:
        """Rewrite the PSK store (written by a worker thread) and signal the broker."""
        assert self.files is not None
        text = await self.psks()  # one join of the lines the key cache keeps
        await asyncio.to_thread(write_private, self.files.psk, text, user=mosquitto.BROKER_USER)
        self.rewrites += 1
        REWRITES.inc()
        if self.mqtt.cert_port and self.crl is not None:
            mosquitto.write_crl(self.files, await self.crl())
        if self._proc is not None and self._proc.returncode is None:
            await self._signal_reload()

    async def _signal_reload(self) -> None:
        """SIGHUP, then wait (at most ``RELOAD_WAIT`` s) until the broker logs that it re-read
        its files: a gateway registered a moment ago must be able to connect at once."""
        assert self.files is not None and self._proc is not None
        log_file = self.files.log
        offset = log_file.stat().st_size if log_file.exists() else 0
        self._proc.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELOAD_WAIT
        while loop.time() < deadline:
            await asyncio.sleep(0.01)
            with contextlib.suppress(OSError), log_file.open("rb") as f:
                f.seek(offset)
                if RELOADED in f.read():
                    return
        log.warning("embedded Mosquitto: reload not confirmed within %.0f s", RELOAD_WAIT)

    async def kick(self, device_uuids: list[str]) -> None:
        """Close the sessions of gateways that may no longer connect (their key is gone)."""
        for device_uuid in device_uuids:
            try:
                async with aiomqtt.Client(
                    self.mqtt.server_host,
                    self.mqtt.server_port,
                    username=self.mqtt.server_username,
                    password=self.password,
                    identifier=device_uuid,
                    clean_session=True,
                ):
                    pass
            except aiomqtt.MqttError as exc:
                log.warning("could not kick %s: %s", device_uuid, exc)

    @property
    def pid(self) -> int | None:
        """The running broker's process id (None when it is not running)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def stop(self) -> None:
        for watcher in self._watchers:
            await watcher.stop()
        self._watchers = []
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
        if self.files is not None:
            shutil.rmtree(self.files.directory, ignore_errors=True)
        self._forget_record()

    def _forget_record(self) -> None:
        """Remove the pid record if this process wrote it. Every CLI command builds a broker
        it never starts, and used to remove the record of the server running beside it."""
        if self.record is None or not self._recorded:
            return
        self._recorded = False
        if any(server == os.getpid() for _, _, server in _read_record(self.record)):
            self.record.unlink(missing_ok=True)
