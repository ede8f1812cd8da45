"""A real S3-API server for tests: moto's server as a subprocess on a free port.

Never mocked in-process: the stores under test talk HTTP to it through boto3, and presigned
URLs are fetched from it with a plain HTTP client.
"""

from __future__ import annotations

import importlib.util
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from edgefleet.files.s3 import make_client
from edgefleet.processes import die_with_parent
from tests.brokers import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

INSTALL_HINT = "moto's server is needed for S3 tests: pip install -e '.[test]' (moto[server])"
REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any key
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> S3Client:
        return make_client(self.endpoint, REGION)

    def new_bucket(self) -> str:
        name = f"edgefleet-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return [o["Key"] for o in listed.get("Contents", [])]

    def open_uploads(self, bucket: str) -> list[str]:
        listed = self.client().list_multipart_uploads(Bucket=bucket)
        return [u["Key"] for u in listed.get("Uploads", [])]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_s3_server(workdir: Path) -> S3Server:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    port = free_port()
    log = workdir / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=die_with_parent,
        )
    server = S3Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto server exited at start: {log.read_text()[-2000:]}", pytrace=False)
        try:
            httpx.get(server.endpoint + "/moto-api/", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.stop()
    pytest.fail(f"moto server did not answer within 30 s: {log.read_text()[-2000:]}", pytrace=False)
