"""Copy the files the AWS user data (deploy/aws/edgefleet.yaml) carries verbatim into it, each
as the body of the here-documents that write it: deploy/install.sh (to
/usr/local/sbin/edgefleet-install, on the servers and the broker nodes) and
deploy/systemd/edgefleet-broker-node.service (on the broker nodes). Run after editing one of
them (tests/integration/test_cloudformation.py fails while a copy differs)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "aws" / "edgefleet.yaml"
EMBEDDED = {
    # the file, where the user data writes it, the here-document's end word
    REPO / "deploy" / "install.sh": ("/usr/local/sbin/edgefleet-install", "SH"),
    REPO / "deploy" / "systemd" / "edgefleet-broker-node.service": (
        "/etc/systemd/system/edgefleet-broker-node.service",
        "UNIT",
    ),
}


def embed(text: str, source: Path, target: str, word: str) -> str:
    """``text`` with the body of every here-document writing ``target`` replaced by ``source``."""
    opener = re.compile(rf"^( *)cat > {re.escape(target)} <<'{word}'\n", re.M)
    content = source.read_text()
    out, pos, found = [], 0, 0
    for m in opener.finditer(text):
        if m.start() < pos:
            continue
        indent = m.group(1)
        end = text.index(f"\n{indent}{word}\n", m.end() - 1)
        body = "".join(indent + line if line.strip() else "\n" for line in content.splitlines(True))
        out += [text[pos : m.end()], body.rstrip("\n")]
        pos, found = end, found + 1
    if not found:
        raise SystemExit(f"{TEMPLATE}: no here-document for {target}")
    return "".join(out) + text[pos:]


def main() -> None:
    text = TEMPLATE.read_text()
    for source, (target, word) in EMBEDDED.items():
        text = embed(text, source, target, word)
    TEMPLATE.write_text(text)


if __name__ == "__main__":
    main()
