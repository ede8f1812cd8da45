"""The console's translations are complete: every message in the templates, web/**.py and the
browser scripts is in each language's catalogue with a translation, and the committed .mo are
those catalogues compiled (scripts/translations.py; Babel's own extractors)."""

from __future__ import annotations

import gettext
from pathlib import Path

from scripts import translations

from edgefleet.web import i18n


def test_every_console_string_is_translated_and_compiled() -> None:
    problems = translations.problems()
    assert problems == [], "\n".join(
        [*problems[:40], "run: .venv/bin/python -m scripts.translations, then translate"]
    )


def test_the_extraction_sees_templates_python_and_scripts() -> None:
    """The check above is only as good as the extraction: it must find strings of each kind
    (a template's {% trans %} block, a plural, web/**.py, a script's t() and tn())."""
    console = {
        m.id if isinstance(m.id, str) else m.id[0]: m for m in translations.extract(i18n.DOMAIN)
    }
    scripts = {
        m.id if isinstance(m.id, str) else m.id[0]: m for m in translations.extract(i18n.JS_DOMAIN)
    }
    assert "The console has no page at <code>%(url)s</code>." in console  # {% trans %}
    assert "%(num)s group" in console  # ngettext in a template
    assert "No gateway is named %(name)s." in console  # web/admin/events.py
    assert "device_offline" in console  # web/terms.py
    assert "Select gateways first" in scripts  # devices.js t()
    assert "{n} gateway selected" in scripts  # devices.js tn()
    assert not set(scripts) & {"Skip to content"}  # each domain holds its own


def test_a_translated_page_string_and_a_plural(tmp_path: Path) -> None:
    zh = i18n.translations("zh_TW")
    assert isinstance(zh, gettext.GNUTranslations)
    assert zh.gettext("Gateways") == "閘道器"
    assert zh.ngettext("%(num)s group", "%(num)s groups", 3) % {"num": 3} == "3 個群組"
    catalog = i18n.js_catalog("zh_TW")
    assert catalog["plurals"] == ["other"]
    assert catalog["messages"]["{n} gateway selected"] == ["已選取 {n} 台閘道器"]
    assert i18n.js_catalog("en") == {"messages": {}, "plurals": ["one", "other"]}


def test_the_language_is_the_users_then_the_cookies_then_the_browsers() -> None:
    assert i18n.negotiate("zh_TW", "en", "en-US") == "zh_TW"
    assert i18n.negotiate("", "zh_TW", "en-US") == "zh_TW"
    assert i18n.negotiate("", "", "de-DE, zh-Hant;q=0.8, en;q=0.5") == "zh_TW"
    assert i18n.negotiate("", "", "en-GB, zh-TW;q=0.9") == "en"
    assert i18n.negotiate("", "", "zh-TW;q=0, fr") == "en"  # q=0: not wanted
    assert i18n.negotiate("", "", "") == "en"
    assert i18n.negotiate("klingon", "xx", "tlh") == "en"
