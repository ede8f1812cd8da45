"""The broker node (brokers/node.py): its reading of the server's key answers, and its sync
against an in-memory twin of the server (no broker, no network)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from edgefleet.brokers.node import (
    BrokerNode,
    BrokerNodeError,
    KeyStore,
    NodeConfig,
    SyncAnswerError,
    parse_psk_file,
    parse_sync,
    server_hash,
)
from edgefleet.settings import MQTTSettings

A, B, C = "a" * 8, "b" * 8, "c" * 8


def test_a_full_answer_replaces_the_store_and_names_the_keys_gone_or_replaced() -> None:
    store = KeyStore({A: "01", B: "02"})
    change = store.apply(parse_sync(f"# cursor=7 full\n{A}:01\n{C}:03\n"))
    assert store.keys == {A: "01", C: "03"}
    assert change.changed and change.gone == {B}
    again = store.apply(parse_sync(f"# cursor=7 full\n{A}:01\n{C}:03\n"))
    assert not again.changed and not again.gone


def test_changes_set_and_remove_keys_and_an_unchanged_answer_changes_nothing() -> None:
    store = KeyStore({A: "01", B: "02"})
    answer = parse_sync(f"# cursor=9 changes\n{C}:03\n{A}:ff\n-{B}\n-{'d' * 8}\n")
    assert answer.cursor == 9 and not answer.full
    change = store.apply(answer)
    assert store.keys == {A: "ff", C: "03"}
    assert change.changed and change.gone == {A, B}  # A's old key, B removed
    assert not store.apply(parse_sync("# cursor=9 changes\n")).changed
    assert not store.apply(parse_sync(f"# cursor=10 changes\n{C}:03\n")).changed  # twice


def test_only_an_added_key_changes_the_store_without_closing_sessions() -> None:
    store = KeyStore()
    change = store.apply(parse_sync(f"# cursor=1 changes\n{A}:01\n"))
    assert change.changed and not change.gone
    assert store.text() == f"{A}:01\n"


def test_the_store_is_written_sorted_in_mosquittos_format() -> None:
    store = KeyStore({C: "03", A: "01"})
    assert store.text() == f"{A}:01\n{C}:03\n"
    assert parse_psk_file(store.text()) == {A: "01", C: "03"}


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "<html>proxy error</html>\n",
        "# cursor=x full\n",
        "# cursor=1 partial\n",
        f"# cursor=1 full\n-{A}\n",
        f"# cursor=1 changes\n{A}\n",
        f"# cursor=1 changes\n{A}:xyz\n",
        f"# cursor=1 changes\n{A}:abc\n",
        "# cursor=1 changes\n:00\n",
        "# cursor=1 changes\n-\n",
        # identities Mosquitto's psk_file or an MQTT client id would take otherwise
        "# cursor=1 changes\n../../etc/passwd:00\n",
        "# cursor=1 changes\n#comment:00\n",
        "# cursor=1 changes\na b:00\n",
        "# cursor=1 changes\na\x00b:00\n",
        "# cursor=1 changes\na/#:00\n",
        f"# cursor=1 changes\n{'a' * 129}:00\n",
        "# cursor=1 changes\n-a/#\n",
        "# cursor=1 changes\n-a b\n",
    ],
)
def test_an_answer_that_is_not_a_key_file_is_refused(answer: str) -> None:
    with pytest.raises(SyncAnswerError):
        parse_sync(answer)


def test_a_refused_answer_does_not_say_the_keys() -> None:
    with pytest.raises(SyncAnswerError) as err:
        parse_psk_file(f"{A}:{'zz' * 32}\n")
    assert "zz" not in err.value.message and A not in err.value.message


# --- the sync against a server twin (httpx's in-memory transport) ---------------------------


class ServerTwin:
    """Answers GET /api/v1/broker/psk-file as the server does (services/keys.py), from a
    dict of keys and a log of changes."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.log: list[str] = []
        self.requests: list[httpx.Request] = []
        self.down = False

    def set(self, identity: str, key: str | None) -> None:
        if key is None:
            self.keys.pop(identity, None)
        else:
            self.keys[identity] = key
        self.log.append(identity)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("connection refused")
        if request.headers.get("mx-api-token") != "t0ken":
            return httpx.Response(401)
        if request.url.path.startswith("/api/v1/broker/nodes/"):
            return httpx.Response(409, json={"detail": "node edge-a is registered elsewhere"})
        cursor = str(len(self.log))
        body = "".join(f"{i}:{k}\n" for i, k in sorted(self.keys.items()))
        since = request.url.params.get("since")
        if since is None:
            etag = f'"{hashlib.sha256(body.encode()).hexdigest()[:32]}"'
            headers = {"ETag": etag, "X-Edgefleet-Cursor": cursor}
            if request.headers.get("if-none-match") == etag:
                return httpx.Response(304, headers=headers)
            return httpx.Response(200, text=body, headers=headers)
        changed = dict.fromkeys(self.log[int(since) :])
        lines = [f"# cursor={cursor} changes\n"]
        lines += [f"{i}:{self.keys[i]}\n" if i in self.keys else f"-{i}\n" for i in changed]
        return httpx.Response(200, text="".join(lines))


@pytest.fixture
def twin() -> ServerTwin:
    return ServerTwin()


def _node(tmp_path: Path, full_seconds: float = 600) -> BrokerNode:
    config = NodeConfig(
        server_url="http://server",
        token="t0ken",
        directory=tmp_path,
        mqtt=MQTTSettings(),
        server_password="pw",
        full_seconds=full_seconds,
    )
    return BrokerNode(config)


def _client(twin: ServerTwin) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="http://server", transport=httpx.MockTransport(twin))


async def test_the_node_takes_every_key_then_only_changes_and_writes_only_on_change(
    tmp_path: Path, twin: ServerTwin
) -> None:
    node = _node(tmp_path)
    twin.set(A, "01")
    async with _client(twin) as client:
        assert await node.sync_once(client)
        assert node.files.psk.read_text() == f"{A}:01\n"
        assert "since" not in twin.requests[-1].url.params  # the first: every key
        written = node.files.psk.stat().st_mtime_ns
        assert not await node.sync_once(client)
        assert twin.requests[-1].url.params["since"] == "1"
        assert node.files.psk.stat().st_mtime_ns == written  # nothing changed: not rewritten
        twin.set(B, "02")
        twin.set(A, None)
        assert await node.sync_once(client)
        assert node.files.psk.read_text() == f"{B}:02\n"
        assert node.cursor == 3


async def test_the_periodic_whole_check_is_a_304_by_the_etag_when_nothing_changed(
    tmp_path: Path, twin: ServerTwin
) -> None:
    node = _node(tmp_path, full_seconds=0)  # every sync is a whole check
    twin.set(A, "01")
    async with _client(twin) as client:
        assert await node.sync_once(client)
        assert not await node.sync_once(client)
        assert twin.requests[-1].headers["if-none-match"] == node.etag
        assert node.files.psk.read_text() == f"{A}:01\n"


async def test_a_failed_write_is_done_at_the_next_answer(tmp_path: Path, twin: ServerTwin) -> None:
    node = _node(tmp_path)
    twin.set(A, "01")
    node.files.psk.mkdir()  # the file cannot be written
    async with _client(twin) as client:
        with pytest.raises(BrokerNodeError, match="could not write"):
            await node.sync_once(client)
        node.files.psk.rmdir()
        assert await node.sync_once(client)  # nothing new from the server, written anyway
    assert node.files.psk.read_text() == f"{A}:01\n"


async def test_a_refused_token_or_an_unreachable_server_keeps_the_store(
    tmp_path: Path, twin: ServerTwin
) -> None:
    node = _node(tmp_path)
    twin.set(A, "01")
    async with _client(twin) as client:
        await node.sync_once(client)
        twin.down = True
        with pytest.raises(httpx.ConnectError):
            await node.sync_once(client)
        twin.down = False
        node.config = replace(node.config, token="Xk9-stale-token")
        with pytest.raises(BrokerNodeError, match="refused the broker token") as err:
            await node.sync_once(client)
        assert "Xk9" not in err.value.message
    assert node.files.psk.read_text() == f"{A}:01\n"


async def test_a_refused_registration_is_reported_but_the_keys_are_still_synced(
    tmp_path: Path, twin: ServerTwin
) -> None:
    """A node whose registration is refused (409: its name is held by a live node at another
    address, e.g. restarted at a new address; 400: an address outside mqtt.node_networks)
    says why, and still follows the keys: gateways provisioned meanwhile can connect."""
    node = _node(tmp_path)
    node.config = replace(node.config, name="edge-a", advertise="10.0.0.9:18830")
    twin.set(A, "01")
    async with _client(twin) as client:
        with pytest.raises(BrokerNodeError, match=r"refused this node's registration.*elsewhere"):
            await node.sync_once(client)
    assert node.files.psk.read_text() == f"{A}:01\n"
    assert [r.method for r in twin.requests] == ["PUT", "GET"]


def test_the_server_users_hash_is_taken_from_a_mosquitto_password_file() -> None:
    text = "other:$7$101$abc$def\nedgefleet-server:$7$101$salt$hash\n"
    assert server_hash(text, "edgefleet-server") == "$7$101$salt$hash"
    with pytest.raises(BrokerNodeError, match="no line for edgefleet-server"):
        server_hash("other:$7$101$abc$def\n", "edgefleet-server")
    with pytest.raises(BrokerNodeError, match="not a mosquitto_passwd hash") as err:
        server_hash("edgefleet-server:plain-password\n", "edgefleet-server")
    assert "plain-password" not in err.value.message
