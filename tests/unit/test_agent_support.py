"""A real HTTP file server for agent tests (downloads with a required header, uploads), and
the configuration the agent tests share; the tests here check the server itself."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.config import AgentConfig

UUID = "2ad0fbb8-6f53-46ea-a10a-00b7b75145d3"
PSK = "a1" * 32
TOKEN = "secret-download-token"


def agent_config(tmp_path: Path, **overrides: Any) -> AgentConfig:
    """A config for tests: harmless commands, everything under ``tmp_path``."""
    doc: dict[str, Any] = {
        "remoteHost": "127.0.0.1",
        "remotePort": 8883,
        "deviceUUID": UUID,
        "psk": PSK,
        "dataDir": str(tmp_path / "data"),
        "rebootCommand": ["touch", str(tmp_path / "rebooted")],
        "configScopes": {"system": [str(tmp_path / "etc")]},
        "commandTimeout": 30,
    }
    doc.update(overrides)
    return AgentConfig.model_validate(doc)


@dataclass
class FileServer:
    """Serves ``files`` at ``/files/<name>``; a request without ``mx-api-token: TOKEN`` gets
    403. ``POST /upload`` stores the body and answers ``{fieldname, url}`` as filebin does."""

    files: dict[str, bytes] = field(default_factory=dict)
    uploads: list[bytes] = field(default_factory=list)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    @property
    def upload_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/upload"


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes, ctype: str = "application/octet-stream") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            token = self.headers.get("mx-api-token")
            server.requests.append(("GET", self.path, token))
            name = self.path.removeprefix("/files/")
            if token != TOKEN:
                self._reply(403, b'{"message":"forbidden"}', "application/json")
            elif name not in server.files:
                self._reply(404, b'{"message":"not found"}', "application/json")
            else:
                self._reply(200, server.files[name])

        def do_POST(self) -> None:
            token = self.headers.get("mx-api-token")
            server.requests.append(("POST", self.path, token))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if token != TOKEN:
                self._reply(403, b'{"message":"forbidden"}', "application/json")
                return
            server.uploads.append(body)
            answer = {"fieldname": "file", "url": f"/api/v1/files/download/{len(server.uploads)}"}
            self._reply(200, json.dumps(answer).encode(), "application/json")

    return Handler


@contextlib.contextmanager
def serve_files() -> Iterator[FileServer]:
    """Run a :class:`FileServer` on 127.0.0.1 (a free port) in a thread."""
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        yield server


def test_the_file_server_wants_the_token(file_server: FileServer) -> None:
    file_server.files["a.bin"] = b"abc"
    with httpx.Client() as c:
        assert c.get(file_server.url("a.bin")).status_code == 403
        r = c.get(file_server.url("a.bin"), headers={"mx-api-token": TOKEN})
        assert r.status_code == 200 and r.content == b"abc"
        assert c.get(file_server.url("b"), headers={"mx-api-token": TOKEN}).status_code == 404
