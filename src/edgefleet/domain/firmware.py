"""Firmware catalogue rules: what a version and a model list may be, and which gateways an
image fits."""

from __future__ import annotations

import re
from collections.abc import Iterable

from edgefleet.errors import ValidationError

VERSION_MAX = 64
MODEL_MAX = 128
MODELS_MAX = 100
NOTES_MAX = 4096

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+~:-]*")


def parse_version(value: str | None) -> str:
    version = (value or "").strip()
    if not version:
        raise ValidationError("version is required")
    if len(version) > VERSION_MAX or not _VERSION.fullmatch(version):
        raise ValidationError(
            f"version must be 1-{VERSION_MAX} letters, digits, spaces or ._+~:- "
            "and start with a letter or digit"
        )
    return version


def parse_models(values: Iterable[str]) -> list[str]:
    """Model names from repeated and/or comma-separated values, trimmed, first spelling kept."""
    out: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name or name in out:
                continue
            if len(name) > MODEL_MAX:
                raise ValidationError(f"a model name is longer than {MODEL_MAX} characters")
            out.append(name)
    if len(out) > MODELS_MAX:
        raise ValidationError(f"at most {MODELS_MAX} models")
    return out


def parse_notes(value: str | None) -> str:
    notes = (value or "").strip()
    if len(notes) > NOTES_MAX:
        raise ValidationError(f"notes longer than {NOTES_MAX} characters")
    return notes


def fits(models: Iterable[str], model_name: str) -> bool:
    """Whether an image for ``models`` (empty: any model) fits a gateway of ``model_name``."""
    names = list(models)
    return not names or model_name in names
