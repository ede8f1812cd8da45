"""Files in an S3 bucket (AWS or any S3 API), downloaded by presigned GET.

boto3 blocks, so every call runs in a worker thread. An upload is buffered at most one part
(8 MiB) at a time: a small file is one ``put_object``, a larger one a multipart upload that
is aborted if anything goes wrong. Credentials come from boto3's usual chain (environment,
shared files, instance role) and are never logged. botocore errors become ``StorageError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edgefleet.errors import FileTooLargeError, StorageError, StoredFileNotFoundError
from edgefleet.files import CHUNK_SIZE, FileStore, StoredFile, is_key, new_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
"""Bytes per part of a multipart upload (S3 wants at least 5 MiB for all but the last)."""

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""The longest a SigV4 presigned URL may live."""

T = TypeVar("T")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def make_client(endpoint_url: str = "", region: str = "") -> S3Client:
    """An S3 client from boto3's credential chain; path-style addressing for a custom endpoint."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
    )


class S3FileStore(FileStore):
    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def _object(self, key: str) -> str:
        if not is_key(key):
            raise StoredFileNotFoundError(key)
        return self.prefix + key

    async def _call(self, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise StoredFileNotFoundError(str(kwargs.get("Key", ""))) from exc
            raise StorageError(f"file store: {what} failed ({code or 'error'})") from exc
        except BotoCoreError as exc:
            raise StorageError(f"file store: {what} failed ({type(exc).__name__})") from exc

    async def put(
        self,
        chunks: AsyncIterable[bytes],
        filename: str,
        content_type: str,
        max_bytes: int,
    ) -> StoredFile:
        return await self._write(new_key(filename), chunks, filename, content_type, max_bytes)

    async def put_at(self, key: str, chunks: AsyncIterable[bytes], content_type: str) -> StoredFile:
        self._object(key)  # a malformed key is refused before anything is written
        return await self._write(key, chunks, key.rsplit("/", 1)[-1], content_type, None)

    async def _write(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        filename: str,
        content_type: str,
        max_bytes: int | None,
    ) -> StoredFile:
        obj = self.prefix + key
        where: dict[str, Any] = {"Bucket": self.bucket, "Key": obj}
        digest, size, buf = hashlib.sha256(), 0, bytearray()
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []

        async def send_part() -> None:
            nonlocal upload_id, buf
            if upload_id is None:
                created = await self._call(
                    "create_multipart_upload",
                    self.client.create_multipart_upload,
                    ContentType=content_type,
                    **where,
                )
                upload_id = created["UploadId"]
            number = len(parts) + 1
            body, buf = bytes(buf), bytearray()
            sent = await self._call(
                "upload_part",
                self.client.upload_part,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                **where,
            )
            parts.append({"ETag": sent["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLargeError(max_bytes)
                digest.update(chunk)
                buf += chunk
                if len(buf) >= PART_SIZE:
                    await send_part()
            if upload_id is None:
                await self._call(
                    "put_object",
                    self.client.put_object,
                    Body=bytes(buf),
                    ContentType=content_type,
                    **where,
                )
            else:
                if buf:
                    await send_part()
                await self._call(
                    "complete_multipart_upload",
                    self.client.complete_multipart_upload,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **where,
                )
        except BaseException:
            if upload_id is not None:
                try:
                    await self._call(
                        "abort_multipart_upload",
                        self.client.abort_multipart_upload,
                        UploadId=upload_id,
                        **where,
                    )
                except StorageError:
                    log.warning("could not abort the multipart upload of %s", obj, exc_info=True)
            raise
        return StoredFile(key, size, digest.hexdigest(), filename, content_type)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        got = await self._call(
            "get_object", self.client.get_object, Bucket=self.bucket, Key=self._object(key)
        )
        return self._read(got["Body"])

    async def _read(self, body: Any) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    chunk: bytes = await asyncio.to_thread(body.read, CHUNK_SIZE)
                except (BotoCoreError, OSError) as exc:
                    raise StorageError(f"file store: read failed ({type(exc).__name__})") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        if is_key(key):
            await self._call(
                "delete_object",
                self.client.delete_object,
                Bucket=self.bucket,
                Key=self._object(key),
            )

    async def download_url(self, key: str, ttl_seconds: int) -> str:
        name = key.rsplit("/", 1)[-1]
        return await self._call(
            "generate_presigned_url",
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._object(key),
                "ResponseContentDisposition": f'attachment; filename="{name}"',
            },
            ExpiresIn=max(1, min(ttl_seconds, MAX_PRESIGN_SECONDS)),
        )
