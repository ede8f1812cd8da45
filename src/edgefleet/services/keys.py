"""Every gateway's key, decrypted once and held in memory, kept current change by change.

Brokers ask for keys all the time: the hooks (``/broker/authn|authz``) once per connection and
subscription, the sync endpoint (``/broker/psk-file``) every few seconds per broker node, and
the embedded Mosquitto's key file after each registration. Decrypting the whole fleet for
each (≈ 40 µs a key: 4 s at 100,000 gateways) froze the server; here it happens once, at
start, in a worker thread, chunk by chunk.

After that the cache follows the log of key changes (``key_changes``, db/repos/keys.py):

- changes made through this process arrive at once from the fleet service (a credential
  listener, called before the registering request answers), so a new gateway's key is known
  before the gateway is, and a deleted one's is gone before the deletion is confirmed;
- changes made by another server instance or a CLI command are read from the log, by its
  ``seq``, every ``poll_seconds`` (1 s). Polling was chosen over PostgreSQL's LISTEN/NOTIFY:
  the same code runs on SQLite, the query is one index probe that usually returns nothing,
  it needs no connection held aside, and a broker node syncs every 5-15 s anyway; a change is
  seen by every instance within a second.

The cursor handed to brokers is that ``seq``: every instance of the fleet speaks the same
cursors, so a broker behind a load balancer may ask any of them. Changes read from the log are
applied per gateway as "its state now" (its key, or its absence), which makes applying one
twice harmless; a change made here and not yet passed by the cursor is not overwritten by an
older state read from the log (``_pending``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import Counter, Gauge

from edgefleet.clock import Clock, utcnow
from edgefleet.db.engine import Database
from edgefleet.db.repos.keys import KeyChangeRepo
from edgefleet.errors import StorageError
from edgefleet.secretbox import SecretBox
from edgefleet.services.fleet import CredentialChange

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
LOAD_CHUNK = 5000
"""Keys read and decrypted per step of the first load."""
THREAD_AT = 200
"""Decrypt in a worker thread from this many keys on (fewer cost less than the hand-off)."""
MEMORY_LOG = 100_000
"""Changes remembered by ``seq``, to answer ``changes_since`` (older cursors get everything)."""
LOG_RETENTION = timedelta(days=1)
"""How long ``key_changes`` rows are kept in the database."""
PRUNE_EVERY = 3600.0
RESET_CHECK_EVERY = 60.0

KEYS = Gauge("edgefleet_gateway_keys", "Gateway keys held in memory")
SYNC_ANSWERS = Counter(
    "edgefleet_key_sync_answers_total",
    "Answers to brokers' key syncs (GET /broker/psk-file): every key (full), the changes "
    "since a cursor (changes), or 304 for an unchanged ETag (unchanged)",
    ["answer"],
)

KeyListener = Callable[[list[str], list[str]], None]
"""Called on the event loop with ``(changed, revoked)``: the gateways whose key was set or
removed, and among them those whose previous key no longer works (deleted or replaced)."""


@dataclass(frozen=True)
class KeyDelta:
    """The changes after a cursor: ``keys`` to set, ``deleted`` to remove, and the new cursor."""

    cursor: int
    keys: dict[str, str]
    deleted: list[str]


@dataclass(frozen=True)
class KeyFile:
    """Every key in Mosquitto's ``psk_file`` format, as of ``cursor``; ``digest`` names the
    content (the HTTP ETag: equal on every instance that holds the same keys)."""

    cursor: int
    body: bytes
    digest: str


@dataclass(frozen=True)
class KeySync:
    """An answer of the broker sync: ``body`` starts with ``# cursor=<n> full|changes``."""

    cursor: int
    full: bool
    body: bytes


class KeyCache:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        clock: Clock = utcnow,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.db = db
        self.box = box
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.listeners: list[KeyListener] = []
        self._keys: dict[str, str] = {}
        """``uuid → "<uuid>:<hex>\\n"``: each key kept as its line of the PSK file, so the
        file is one C-level join (a few ms for 100,000) rather than 100,000 formattings in
        Python, which, even in a worker thread, held the GIL and stalled the event loop."""
        self._seq = 0
        """Every change up to this ``seq`` is applied."""
        self._pending: dict[str, tuple[int, str | None]] = {}
        """Changes made here that ``_seq`` has not passed yet: ``uuid → (seq, key or None)``."""
        self._log_seqs: list[int] = []
        self._log_uuids: list[str] = []
        self._log_floor = 0
        """``_log_*`` holds every change above this ``seq``."""
        self._version = 0
        self._full: tuple[int, KeyFile] | None = None
        self._loaded = False
        self._load_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # --- reading ---------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def cursor(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._keys)

    async def key(self, uuid: str) -> str | None:
        """The gateway's key (hex), or None when no such gateway is registered."""
        if not self._loaded:
            await self.load()
        line = self._keys.get(uuid)
        return None if line is None else line[len(uuid) + 1 : -1]

    async def snapshot(self) -> list[tuple[str, str]]:
        """Every ``(uuid, key)`` now."""
        if not self._loaded:
            await self.load()
        return [(uuid, line[len(uuid) + 1 : -1]) for uuid, line in self._keys.items()]

    async def psk_text(self) -> str:
        """Every key as ``identity:hex`` lines (Mosquitto's ``psk_file``), in no order."""
        if not self._loaded:
            await self.load()
        return "".join(self._keys.values())

    async def full_text(self) -> KeyFile:
        """Every key as ``identity:hex`` lines sorted by identity (Mosquitto's ``psk_file``),
        rendered in a thread once per change and then reused, with its cursor and digest."""
        if not self._loaded:
            await self.load()
        cached = self._full
        if cached is not None and cached[0] == self._version:
            return cached[1]
        version, cursor, lines = self._version, self._seq, list(self._keys.values())

        def render() -> KeyFile:
            lines.sort()  # by identity: every line starts with a 36-character uuid
            body = "".join(lines).encode()
            return KeyFile(cursor, body, hashlib.sha256(body).hexdigest()[:32])

        made = await asyncio.to_thread(render)
        self._full = (version, made)
        return made

    async def sync(self, since: int | None) -> KeySync:
        """The answer to a broker that has every change up to ``since``: the changes after it,
        or every key when ``since`` is None or this cache cannot answer from there (older
        than the log it holds, or newer than the log itself: a database restored from a
        backup). Reads the log first, so the answer is current even where no background
        loop follows it (one indexed query)."""
        await self.refresh()
        delta = None if since is None else self.changes_since(since)
        if delta is None:
            full = await self.full_text()
            SYNC_ANSWERS.labels("full").inc()
            head = f"# cursor={full.cursor} full\n".encode()
            return KeySync(full.cursor, True, head + full.body)
        SYNC_ANSWERS.labels("changes").inc()
        lines = [f"# cursor={delta.cursor} changes\n"]
        lines += [f"{uuid}:{key}\n" for uuid, key in delta.keys.items()]
        lines += [f"-{uuid}\n" for uuid in delta.deleted]
        return KeySync(delta.cursor, False, "".join(lines).encode())

    def changes_since(self, cursor: int) -> KeyDelta | None:
        """What changed after ``cursor`` (each gateway's state now), or None when this cache
        cannot tell (a cursor older than its memory, or newer than what it has seen)."""
        if cursor < self._log_floor or cursor > self._seq or not self._loaded:
            return None
        start = bisect.bisect_right(self._log_seqs, cursor)
        keys: dict[str, str] = {}
        deleted: list[str] = []
        for uuid in dict.fromkeys(self._log_uuids[start:]):
            line = self._keys.get(uuid)
            if line is None:
                deleted.append(uuid)
            else:
                keys[uuid] = line[len(uuid) + 1 : -1]
        return KeyDelta(self._seq, keys, deleted)

    # --- changes made here -------------------------------------------------------------

    def credentials_changed(self, change: CredentialChange) -> None:
        """The fleet service's credential listener: apply a committed change at once."""
        for uuid, key in change.keys.items():
            self._pending[uuid] = (change.seq, key)
        for uuid in change.deleted:
            self._pending[uuid] = (change.seq, None)
        updates: dict[str, str | None] = {u: f"{u}:{k}\n" for u, k in change.keys.items()}
        updates |= dict.fromkeys(change.deleted)
        self._apply(updates)
        self._wake.set()  # the cursor catches up with it now, not at the next poll

    # --- loading and following the log ---------------------------------------------------

    async def load(self) -> None:
        """Read and decrypt every key (once; later calls return at once)."""
        async with self._load_lock:
            if self._loaded:
                return
            started = time.monotonic()
            async with self.db.session() as s:
                repo = KeyChangeRepo(s)
                cursor = await repo.latest()
                floor = max(await repo.horizon(), cursor - MEMORY_LOG)
                seqs: list[int] = []
                uuids: list[str] = []
                async for page in self._log_pages(repo, floor, cursor):
                    seqs.extend(seq for seq, _ in page)
                    uuids.extend(uuid for _, uuid in page)
            fresh: dict[str, str] = {}
            async with self.db.session() as s:
                async for chunk in KeyChangeRepo(s).all_sealed(LOAD_CHUNK):
                    fresh.update(await asyncio.to_thread(self._open_all, chunk))
            # changes made here while loading: those past the cursor win over what was read
            for uuid, (seq, key) in self._pending.items():
                if seq > cursor:
                    if key is None:
                        fresh.pop(uuid, None)
                    else:
                        fresh[uuid] = f"{uuid}:{key}\n"
            old, self._keys = self._keys, fresh
            self._seq = cursor
            self._log_floor, self._log_seqs, self._log_uuids = floor, seqs, uuids
            self._pending = {u: p for u, p in self._pending.items() if p[0] > cursor}
            self._version += 1
            self._loaded = True
            KEYS.set(len(fresh))
            changed = [u for u, k in fresh.items() if old.get(u) != k]
            changed += [u for u in old if u not in fresh]
            revoked = [u for u, k in old.items() if fresh.get(u) != k]
            if changed:
                for listener in self.listeners:
                    listener(changed, revoked)
            log.info(
                "gateway keys loaded: %d in %.1f s (change log at %d)",
                len(fresh),
                time.monotonic() - started,
                cursor,
            )
        await self.refresh()

    async def _log_pages(
        self, repo: KeyChangeRepo, after: int, upto: int
    ) -> AsyncIterator[list[tuple[int, str]]]:
        while after < upto:
            page = [row for row in await repo.since(after, LOAD_CHUNK) if row[0] <= upto]
            if not page:
                return
            yield page
            after = page[-1][0]

    async def refresh(self) -> None:
        """Apply the changes logged after the cursor (by any instance or command)."""
        if not self._loaded:
            await self.load()
            return
        async with self._refresh_lock:
            while True:
                async with self.db.session() as s:
                    repo = KeyChangeRepo(s)
                    rows = await repo.since(self._seq, LOAD_CHUNK)
                    if not rows:
                        return
                    labels = {uuid: seq for seq, uuid in rows}  # the latest change of each
                    sealed = await repo.sealed_keys(list(labels))
                opened = (
                    await asyncio.to_thread(self._open_all, list(sealed.items()))
                    if len(sealed) >= THREAD_AT
                    else self._open_all(list(sealed.items()))
                )
                updates: dict[str, str | None] = {}
                for uuid, label in labels.items():
                    mine = self._pending.get(uuid)
                    if mine is not None and mine[0] >= label:
                        continue  # changed here after what was read: keep ours
                    updates[uuid] = opened.get(uuid)
                self._apply(updates)
                self._remember(rows)
                self._seq = rows[-1][0]
                self._pending = {u: p for u, p in self._pending.items() if p[0] > self._seq}
                if len(rows) < LOAD_CHUNK:
                    return

    def _open_all(self, sealed: Sequence[tuple[str, str]]) -> dict[str, str]:
        """``uuid → its PSK file line``, decrypted."""
        return {uuid: f"{uuid}:{self.box.open(p)}\n" for uuid, p in sealed}

    def _remember(self, rows: list[tuple[int, str]]) -> None:
        self._log_seqs.extend(seq for seq, _ in rows)
        self._log_uuids.extend(uuid for _, uuid in rows)
        extra = len(self._log_seqs) - MEMORY_LOG
        if extra > MEMORY_LOG // 2:  # trimmed in steps, not at every change
            self._log_floor = self._log_seqs[extra - 1]
            del self._log_seqs[:extra], self._log_uuids[:extra]

    def _apply(self, updates: dict[str, str | None]) -> None:
        """Set (a line) or remove (None) each gateway's key; tell the listeners."""
        changed: list[str] = []
        revoked: list[str] = []
        keys = self._keys
        for uuid, key in updates.items():
            old = keys.get(uuid)
            if old == key:
                continue
            changed.append(uuid)
            if old is not None:
                revoked.append(uuid)
            if key is None:
                del keys[uuid]
            else:
                keys[uuid] = key
        if not changed:
            return
        self._version += 1
        KEYS.set(len(keys))
        for listener in self.listeners:
            listener(changed, revoked)

    async def _reset_if_behind(self) -> None:
        """The log went back (a database restored from a backup): load everything again."""
        async with self.db.session() as s:
            latest = await KeyChangeRepo(s).latest()
        if latest < self._seq:
            log.warning(
                "the key change log is at %d, behind this server's %d (database restored?): "
                "reading every key again",
                latest,
                self._seq,
            )
            self._loaded = False
            self._pending.clear()
            await self.load()

    async def _prune(self) -> None:
        async with self.db.session() as s:
            n = await KeyChangeRepo(s).prune(self.clock() - LOG_RETENTION)
        if n:
            log.info("key change log: %d old entries deleted", n)

    async def run(self) -> None:
        """Load, then follow the log until cancelled (a background loop of the server)."""
        await self.load()
        loop = asyncio.get_running_loop()
        next_prune = next_check = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
                now = loop.time()
                if now >= next_check:
                    next_check = now + RESET_CHECK_EVERY
                    await self._reset_if_behind()
                if now >= next_prune:
                    next_prune = now + PRUNE_EVERY
                    await self._prune()
            except StorageError as exc:
                log.warning("gateway keys: cannot read the change log: %s", exc.message)
