"""Configuration export and import: round trip, scopes, and unsafe archives refused."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent.handlers.configuration import (
    MANIFEST,
    Configuration,
    ImportRefused,
    apply_archive,
)
from edgefleet.agent.plugin import AgentContext, HandlerError, Request
from tests.unit.test_agent_support import TOKEN, FileServer, agent_config, serve_files


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        yield server


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """Two scopes' worth of configuration files."""
    (tmp_path / "etc" / "modbus").mkdir(parents=True)
    (tmp_path / "etc" / "modbus" / "slaves.json").write_text('{"slaves": [1, 2]}')
    (tmp_path / "etc" / "hostname").write_text("gw-7\n")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "eth0.conf").write_text("dhcp=true\n")
    return tmp_path


@pytest.fixture
async def ctx(etc: Path) -> AsyncIterator[AgentContext]:
    async def emit(method: str, resource: str, data: Any, code: int = 200) -> None:
        pass

    config = agent_config(
        etc, configScopes={"system": [str(etc / "etc")], "ethernet": [str(etc / "net")]}
    )
    async with httpx.AsyncClient() as http:
        yield AgentContext(config=config, emit=emit, data_dir=config.dataDir, http=http)


def request(method: str, resource: str, data: Any) -> Request:
    return Request(method, resource, resource, {}, {}, data, "t")


def members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


def private(p: Path) -> bool:
    return p.stat().st_mode & 0o077 == 0


def read(p: Path) -> bytes:
    return p.read_bytes()


def rel(p: Path) -> str:
    return str(p.relative_to("/"))


async def test_export_then_import_restores_the_selected_scopes(
    ctx: AgentContext, etc: Path, file_server: FileServer
) -> None:
    conf = Configuration(ctx)
    code, out = await conf.export(request("post", "/system/export", {}))
    assert code == 200 and out["scopes"] == ["ethernet", "system"]
    archive = Path(out["path"])
    assert archive.parent == ctx.data_dir / "exports" and private(archive)
    assert {MANIFEST, rel(etc / "etc/hostname"), rel(etc / "etc/modbus/slaves.json")} <= members(
        archive
    )
    file_server.files["backup.tar.gz"] = read(archive)

    (etc / "etc" / "hostname").write_text("changed\n")
    (etc / "etc" / "modbus" / "slaves.json").unlink()
    (etc / "net" / "eth0.conf").write_text("dhcp=false\n")
    code, out = await conf.import_(
        request(
            "put",
            "/system/import",
            {
                "file": {
                    "url": file_server.url("backup.tar.gz"),
                    "headers": {"mx-api-token": TOKEN},
                },
                "scopes": ["system"],
            },
        )
    )
    assert code == 200 and out["scopes"] == ["system"]
    assert (etc / "etc" / "hostname").read_text() == "gw-7\n"
    assert (etc / "etc" / "modbus" / "slaves.json").read_text() == '{"slaves": [1, 2]}'
    assert (etc / "net" / "eth0.conf").read_text() == "dhcp=false\n"  # not selected
    assert sorted(out["files"]) == [str(etc / "etc/hostname"), str(etc / "etc/modbus/slaves.json")]
    assert list((ctx.data_dir / "imports").iterdir()) == []  # archive and staging removed


async def test_export_uploads_to_a_url_like_thingspro(
    ctx: AgentContext, file_server: FileServer
) -> None:
    data = {"url": file_server.upload_url, "headers": {"mx-api-token": TOKEN}, "scopes": ["system"]}
    code, out = await Configuration(ctx).export(request("post", "/system/export", data))
    assert code == 200 and out["url"] == "/api/v1/files/download/1"
    assert len(file_server.uploads) == 1 and b'name="file"' in file_server.uploads[0]
    with pytest.raises(HandlerError) as caught:
        await Configuration(ctx).export(
            request("post", "/system/export", {"url": file_server.upload_url})
        )
    assert caught.value.code == 502 and "HTTP 403" in caught.value.message


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ({"file": {"url": "http://h/x"}}, 400, "scopes is required"),
        ({"file": {"url": "http://h/x"}, "scopes": ["nope"]}, 400, "unknown scopes ['nope']"),
        ({"scopes": ["system"]}, 400, "file: Field required"),
    ],
)
async def test_import_checks_its_request(
    ctx: AgentContext, data: dict[str, Any], code: int, message: str
) -> None:
    with pytest.raises(HandlerError) as caught:
        await Configuration(ctx).import_(request("put", "/system/import", data))
    assert caught.value.code == code and message in caught.value.message


async def test_import_with_no_scopes_does_nothing(ctx: AgentContext) -> None:
    data = {"file": {"url": "http://127.0.0.1:9/x"}, "scopes": []}
    assert await Configuration(ctx).import_(request("put", "/system/import", data)) == (
        200,
        {"message": "no selected scopes."},
    )


# --- unsafe archives -------------------------------------------------------------------------


def tar_with(path: Path, *entries: tuple[str, bytes | None, str | None]) -> Path:
    """Entries are (name, content, link target): a file, or a symlink when a target is given."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                assert content is not None
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def scopes(etc: Path) -> dict[str, list[Path]]:
    return {"system": [etc / "etc"]}


def untouched(etc: Path) -> None:
    assert (etc / "etc" / "hostname").read_text() == "gw-7\n"
    assert not (etc / "evil").exists() and not (etc.parent / "evil").exists()


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (("../../evil", b"x", None), "unsafe archive member"),
        (("{etc}/" + "../" * 40 + "evil", b"x", None), "unsafe archive member"),
        (("{etc}/../../evil", b"x", None), "outside the configured scopes"),  # inside staging
        (("/tmp/evil", b"x", None), "outside the configured scopes"),  # "/" is stripped
        (("{etc}/etc/link", None, "/etc/passwd"), "unsafe archive member"),
        (("{etc}/etc/link", None, "../../../../../../../../etc/passwd"), "unsafe archive member"),
        (("{etc}/evil", b"x", None), "outside the configured scopes"),
    ],
)
def test_import_refuses_path_traversal_and_writes_nothing(
    etc: Path, tmp_path: Path, entry: tuple[str, bytes | None, str | None], why: str
) -> None:
    name, content, link = entry
    good = (rel(etc / "etc" / "hostname"), b"overwritten\n", None)
    bad = (name.replace("{etc}", rel(etc)), content, link)
    archive = tar_with(tmp_path / "bad.tar.gz", good, bad)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ImportRefused, match=why):
        apply_archive(archive, scopes(etc), scopes(etc), staging, 10**6)
    untouched(etc)
    assert list(staging.iterdir()) == []


def test_import_refuses_what_is_not_an_archive_or_too_big(etc: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file at all")
    with pytest.raises(ImportRefused, match=r"not a valid tar\.gz archive"):
        apply_archive(junk, scopes(etc), scopes(etc), tmp_path, 10**6)
    big = tar_with(tmp_path / "big.tar.gz", (rel(etc / "etc/hostname"), b"x" * 5000, None))
    with pytest.raises(ImportRefused, match="more than 1000 bytes"):
        apply_archive(big, scopes(etc), scopes(etc), tmp_path, 1000)
    untouched(etc)


def test_links_inside_the_scope_are_skipped_not_followed(etc: Path, tmp_path: Path) -> None:
    archive = tar_with(
        tmp_path / "a.tar.gz",
        (rel(etc / "etc/hostname"), b"gw-8\n", None),
        (rel(etc / "etc/alias"), None, "hostname"),
        (MANIFEST, json.dumps({"scopes": {}}).encode(), None),
    )
    applied = apply_archive(archive, scopes(etc), scopes(etc), tmp_path, 10**6)
    assert applied.files == [str(etc / "etc/hostname")]
    assert applied.skipped == [str(etc / "etc/alias")]
    assert (etc / "etc/hostname").read_text() == "gw-8\n" and not (etc / "etc/alias").exists()
