"""The console's languages: gettext catalogues made with Babel, and which one a request gets.

Every string the console shows is a gettext message: in templates (Jinja2's i18n extension,
``{% trans %}`` and ``_()``), in the Python of ``web/`` (``gettext``/``ngettext`` here, ``N_``
for constants translated when shown) and in the browser scripts (``t()``/``tn()``, domain
``console_js``, whose catalogue is embedded in each page as JSON). English is the source
language; ``locale/<lang>/LC_MESSAGES/*.po`` hold the translations and the compiled ``.mo``
next to them are committed (package data: ``pip install`` needs no build step, and a test
checks they are the compiled .po). ``scripts/translations.py`` extracts, updates, compiles.

A request's language: the user's choice (``users.locale``, set from the console), else the
``edgefleet_locale`` cookie (the login page's switch), else the browser's
``Accept-Language``, else English.
"""

from __future__ import annotations

import gettext as gettext_module
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.messages.mofile import read_mo

from edgefleet.domain.auth import LOCALES

HERE = Path(__file__).parent / "locale"
DOMAIN = "console"
JS_DOMAIN = "console_js"
DEFAULT = "en"
COOKIE = "edgefleet_locale"
NAMES = {"en": "English", "zh_TW": "繁體中文"}
"""Each language in its own words (the switch lists them so)."""
HTML_LANG = {"en": "en", "zh_TW": "zh-Hant-TW"}
PLURAL_ORDER = ("zero", "one", "two", "few", "many", "other")

_current: ContextVar[str] = ContextVar("edgefleet_console_locale", default=DEFAULT)


@cache
def translations(locale: str) -> gettext_module.NullTranslations:
    if locale == DEFAULT:
        return gettext_module.NullTranslations()
    return gettext_module.translation(DOMAIN, HERE, languages=[locale])


def current() -> str:
    return _current.get()


@contextmanager
def using(locale: str) -> Iterator[None]:
    token = _current.set(locale if locale in LOCALES else DEFAULT)
    try:
        yield
    finally:
        _current.reset(token)


def activate(locale: str) -> None:
    """Make ``locale`` the language of the rest of this request (its own task's context)."""
    _current.set(locale if locale in LOCALES else DEFAULT)


def gettext(message: str) -> str:
    return translations(_current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_current.get()).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Marks a constant for extraction; it is translated where it is shown."""
    return message


def _accepted(header: str) -> list[str]:
    """Accept-Language's tags, most wanted first (q=0 ones left out)."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def _supported(tag: str) -> str | None:
    """Our language for a BCP 47 tag: any Chinese is Traditional Chinese (the one we have)."""
    low = tag.lower().replace("_", "-")
    if low == "zh" or low.startswith("zh-"):
        return "zh_TW"
    if low == "en" or low.startswith("en-"):
        return "en"
    return None


def negotiate(chosen: str, cookie: str, accept_language: str) -> str:
    for candidate in (chosen, cookie):
        if candidate in LOCALES:
            return candidate
    for tag in _accepted(accept_language):
        found = _supported(tag)
        if found is not None:
            return found
    return DEFAULT


@cache
def js_catalog(locale: str) -> dict[str, Any]:
    """What the browser scripts need to translate themselves: ``{"messages": {msgid: text
    or [forms]}, "plurals": [CLDR plural categories in the catalogue's order]}``."""
    tags = Locale.parse(locale).plural_form.tags
    plurals = [t for t in PLURAL_ORDER if t in tags or t == "other"]
    messages: dict[str, Any] = {}
    if locale != DEFAULT:
        path = HERE / locale / "LC_MESSAGES" / f"{JS_DOMAIN}.mo"
        with path.open("rb") as f:
            catalog = read_mo(f)
        for m in catalog:
            if not m.id or not m.string:
                continue
            if isinstance(m.id, tuple | list):
                messages[m.id[0]] = list(m.string)
            else:
                messages[m.id] = m.string
    return {"messages": messages, "plurals": plurals}
