"""The ``FileStore`` contract, run over every implementation: a directory and S3 (a real moto
server over HTTP)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from edgefleet.errors import FileTooLargeError, PermissionDeniedError, StoredFileNotFoundError
from edgefleet.files import FileStore, is_key, safe_filename
from edgefleet.files.local import LocalFileStore
from edgefleet.files.s3 import PART_SIZE, S3FileStore
from edgefleet.files.signing import UrlSigner
from tests.s3server import S3Server

MiB = 1024 * 1024


@dataclass
class StoreUnderTest:
    store: FileStore
    leftovers: object  # () -> list[str]: whatever the store still holds

    def left(self) -> list[str]:
        return self.leftovers()  # type: ignore[operator,no-any-return]


@pytest.fixture(params=["local", "s3"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    if request.param == "local":
        root = tmp_path / "files"
        store = LocalFileStore(root, UrlSigner(b"k"), "http://files.example/")
        return StoreUnderTest(store, lambda: sorted(str(p) for p in root.rglob("*") if p.is_file()))
    s3: S3Server = request.getfixturevalue("s3_server")
    bucket = s3.new_bucket()
    return StoreUnderTest(
        S3FileStore(s3.client(), bucket, "some/prefix/"),
        lambda: s3.objects(bucket) + s3.open_uploads(bucket),
    )


async def stream(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


async def read_all(store: FileStore, key: str) -> bytes:
    return b"".join([c async for c in await store.open(key)])


@pytest.mark.parametrize("size", [0, 1000, 2 * PART_SIZE + 5])
async def test_a_stored_file_reads_back_the_same_with_its_size_and_digest(
    subject: StoreUnderTest, size: int
) -> None:
    data = os.urandom(size)
    got = await subject.store.put(stream(data), "fw image 1.2.bin", "x/y", 3 * PART_SIZE)
    assert got.size == size and got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.filename == "fw image 1.2.bin" and got.content_type == "x/y"
    assert is_key(got.key) and got.key.endswith("/fw_image_1.2.bin")
    assert await read_all(subject.store, got.key) == data


async def test_a_file_over_the_limit_is_refused_and_nothing_is_left_when_over_limit(
    subject: StoreUnderTest,
) -> None:
    with pytest.raises(FileTooLargeError) as caught:
        await subject.store.put(stream(os.urandom(2 * PART_SIZE)), "big", "", PART_SIZE + 10)
    assert caught.value.limit == PART_SIZE + 10
    assert subject.left() == []


async def test_nothing_is_left_when_the_stream_fails_midway(subject: StoreUnderTest) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(PART_SIZE + 1)  # a multipart upload has begun on S3
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await subject.store.put(broken(), "x", "", 10 * MiB)
    assert subject.left() == []


async def test_a_deleted_file_is_gone_when_deleted_twice(subject: StoreUnderTest) -> None:
    got = await subject.store.put(stream(b"abc"), "a.txt", "text/plain", 100)
    assert subject.left() != []
    await subject.store.delete(got.key)
    await subject.store.delete(got.key)  # not an error
    assert subject.left() == []
    with pytest.raises(StoredFileNotFoundError):
        await subject.store.open(got.key)


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/b", "0" * 32 + "/../x", ""])
async def test_a_malformed_key_is_not_found_when_opened(subject: StoreUnderTest, key: str) -> None:
    with pytest.raises(StoredFileNotFoundError):
        await subject.store.open(key)
    await subject.store.delete(key)  # quietly nothing


async def test_the_download_url_serves_the_file_when_fetched(
    subject: StoreUnderTest,
) -> None:
    data = os.urandom(5000)
    got = await subject.store.put(stream(data), "fw.bin", "", 10_000)
    url = await subject.store.download_url(got.key, 60)
    assert url.startswith("http")
    if isinstance(subject.store, S3FileStore):  # a presigned URL: plain HTTP, no credentials
        async with httpx.AsyncClient() as http:
            r = await http.get(url)
        assert r.status_code == 200 and r.content == data
        return
    # the server serves local files itself (tests/integration/test_filebin.py); here: the link
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"http://files.example/filebin/download/{got.key}"
    )
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert isinstance(subject.store, LocalFileStore)
    signer = subject.store.signer
    signer.check(got.key, int(q["expires"]), q["sig"])
    with pytest.raises(PermissionDeniedError):
        signer.check(got.key, int(q["expires"]) + 1, q["sig"])


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("fw-1.2.img", "fw-1.2.img"),
        ("C:\\Users\\me\\fw 1.img", "fw_1.img"),
        ("../../etc/passwd", "passwd"),
        (".hidden", "hidden"),
        ("", "file"),
        ("ü.bin", "_.bin"),
        ("a" * 300 + ".tar.gz", "a" * 97 + ".gz"),
    ],
)
def test_file_names_are_made_safe_for_keys(given: str, safe: str) -> None:
    assert safe_filename(given) == safe
