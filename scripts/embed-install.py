"""Copy deploy/install.sh into the AWS user data (deploy/aws/edgefleet.yaml), which carries it
verbatim as the here-document written to /usr/local/sbin/edgefleet-install: run after editing
the script (tests/integration/test_cloudformation.py fails while the two differ)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "aws" / "edgefleet.yaml"
OPENER = re.compile(r"^( *)cat > /usr/local/sbin/edgefleet-install <<'SH'\n", re.M)


def main() -> None:
    text = TEMPLATE.read_text()
    m = OPENER.search(text)
    if m is None:
        raise SystemExit(f"{TEMPLATE}: no here-document for /usr/local/sbin/edgefleet-install")
    indent = m.group(1)
    end = text.index(f"\n{indent}SH\n", m.end())
    script = (REPO / "deploy" / "install.sh").read_text()
    body = "".join(indent + line if line.strip() else "\n" for line in script.splitlines(True))
    TEMPLATE.write_text(text[: m.end()] + body.rstrip("\n") + text[end:])


if __name__ == "__main__":
    main()
