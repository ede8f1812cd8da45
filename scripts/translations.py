"""The console's translations (src/edgefleet/web/i18n.py): extract, update, compile, check.

    .venv/bin/python -m scripts.translations           # after changing console strings
    .venv/bin/python -m scripts.translations --check   # what the test suite checks

Extracts every message of the console with Babel (templates through Jinja2's extractor,
web/**.py (its packages too) with gettext/ngettext/N_, static/*.js with t/tn into the
``console_js`` domain), writes the templates (``locale/<domain>.pot``), merges them into each
language's .po (new messages come untranslated, gone ones are dropped) and compiles the .mo
beside them. The .mo are committed, so an installed package has them without any build step.
``--check`` fails when a message has no translation (or a fuzzy one) or a .mo is not its .po
compiled.
"""

from __future__ import annotations

import argparse
import io
import sys
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from edgefleet.domain.auth import LOCALES
from edgefleet.web.i18n import DEFAULT, DOMAIN, JS_DOMAIN

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "src" / "edgefleet" / "web"
LOCALE_DIR = WEB / "locale"
TRANSLATED = [locale for locale in LOCALES if locale != DEFAULT]

PY_KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
JS_KEYWORDS = {"t": None, "tn": (1, 2)}
METHODS = {
    DOMAIN: [("templates/**.html", "jinja2"), ("**.py", "python")],
    JS_DOMAIN: [("static/*.js", "javascript")],
}
OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "newstyle_gettext": "true"}}


def extract(domain: str) -> Catalog:
    """Every message of ``domain`` in the sources now, with where it is used."""
    catalog = Catalog(project="edgefleet console", domain=domain, fuzzy=False)
    keywords = JS_KEYWORDS if domain == JS_DOMAIN else PY_KEYWORDS
    found = extract_from_dir(
        str(WEB), METHODS[domain], OPTIONS, keywords, comment_tags=("TRANSLATORS:",)
    )
    for filename, lineno, message, comments, context in found:
        catalog.add(
            message,
            None,
            [(f"web/{filename}", lineno)],
            auto_comments=comments,
            context=context,
        )
    return catalog


def po_path(locale: str, domain: str) -> Path:
    return LOCALE_DIR / locale / "LC_MESSAGES" / f"{domain}.po"


def read(path: Path, locale: str) -> Catalog:
    with path.open("rb") as f:
        return read_po(f, locale=locale)


def compiled(catalog: Catalog) -> bytes:
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def update() -> None:
    for domain in (DOMAIN, JS_DOMAIN):
        template = extract(domain)
        with (LOCALE_DIR / f"{domain}.pot").open("wb") as f:
            write_po(f, template, width=100, omit_header=False)
        for locale in TRANSLATED:
            path = po_path(locale, domain)
            if path.exists():
                catalog = read(path, locale)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                catalog = Catalog(locale=locale, domain=domain, project="edgefleet console")
            catalog.update(template, no_fuzzy_matching=True)
            catalog.revision_date = datetime.now(UTC)
            with path.open("wb") as f:
                write_po(f, catalog, width=100, ignore_obsolete=True)
            path.with_suffix(".mo").write_bytes(compiled(read(path, locale)))


def problems() -> list[str]:
    """What keeps the translations from being complete: messages used in the sources that
    a language lacks or has only fuzzily, and .mo files that are not their .po compiled."""
    out: list[str] = []
    for domain in (DOMAIN, JS_DOMAIN):
        used = extract(domain)
        for locale in TRANSLATED:
            path = po_path(locale, domain)
            if not path.exists():
                out.append(f"{path.relative_to(ROOT)} is missing")
                continue
            catalog = read(path, locale)
            for message in used:
                if not message.id:
                    continue
                have = catalog.get(message.id, context=message.context)
                where = ", ".join(f"{f}:{n}" for f, n in message.locations[:2])
                if have is None:
                    out.append(f"{locale}: {message.id!r} ({where}) is not in {path.name}")
                elif have.fuzzy or not all(
                    have.string if isinstance(have.string, tuple | list) else [have.string]
                ):
                    out.append(f"{locale}: {message.id!r} ({where}) has no translation")
            mo = path.with_suffix(".mo")
            if not mo.exists() or mo.read_bytes() != compiled(catalog):
                out.append(f"{mo.relative_to(ROOT)} is not {path.name} compiled: run this script")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report what is missing")
    args = parser.parse_args()
    if not args.check:
        update()
    found = problems()
    for line in found:
        print(line)
    if found:
        sys.exit(1)


if __name__ == "__main__":
    main()
