"""Firmware catalogue rules (domain/firmware.py) and the storage settings' URL check."""

from __future__ import annotations

import pytest
from pydantic import ValidationError as SettingsError

from edgefleet.domain.firmware import fits, parse_models, parse_notes, parse_version
from edgefleet.errors import ValidationError
from edgefleet.settings import Settings, StorageSettings


@pytest.mark.parametrize("given", ["1.2.3", "2.4 Build 18102617", "v3.0-rc1+git~2"])
def test_ordinary_versions_are_accepted(given: str) -> None:
    assert parse_version(f"  {given} ") == given


@pytest.mark.parametrize("given", [None, "", "   ", "../1", "1/2", "x" * 65, "-1"])
def test_empty_or_odd_versions_are_refused(given: str | None) -> None:
    with pytest.raises(ValidationError):
        parse_version(given)


def test_models_come_comma_separated_or_repeated_without_duplicates() -> None:
    assert parse_models(["A, B", "C", "A", " ,"]) == ["A", "B", "C"]
    assert parse_models([]) == []
    with pytest.raises(ValidationError):
        parse_models(["x" * 129])
    with pytest.raises(ValidationError):
        parse_models([",".join(str(i) for i in range(101))])


def test_notes_are_trimmed_and_bounded() -> None:
    assert parse_notes(None) == "" and parse_notes(" n ") == "n"
    with pytest.raises(ValidationError):
        parse_notes("x" * 4097)


def test_an_image_without_models_fits_any_gateway() -> None:
    assert fits([], "UC-8112") and fits(["UC-8112", "UC-8100"], "UC-8112")
    assert not fits(["UC-8100"], "UC-8112")


@pytest.mark.parametrize("url", ["", "file:///srv/files", "s3://bucket", "s3://bucket/a/b"])
def test_storage_urls_of_known_kinds_are_accepted(url: str) -> None:
    assert StorageSettings(url=url).url == url


@pytest.mark.parametrize("url", ["http://x", "/srv/files", "file://relative", "s3://", "s3:///p"])
def test_storage_urls_of_other_kinds_are_refused(url: str) -> None:
    with pytest.raises(SettingsError):
        StorageSettings(url=url)


def test_storage_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_STORAGE__URL", "s3://b/p")
    monkeypatch.setenv("EDGEFLEET_STORAGE__S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("EDGEFLEET_STORAGE__MAX_FILE_BYTES", "1000")
    s = Settings().storage
    assert (s.url, s.s3_endpoint_url, s.max_file_bytes) == (
        "s3://b/p",
        "http://127.0.0.1:9000",
        1000,
    )
