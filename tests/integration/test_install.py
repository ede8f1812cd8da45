"""The install on a fresh machine: deploy/install.sh in a clean Debian 13 root.

A minimal Debian root (``mmdebstrap --variant=minbase``: no compiler, no Python, no
certificates) is made from the Debian mirror this machine's apt sources name, then, in a fresh
copy of it, under ``chroot`` in namespaces of its own (no Docker):
1. deploy/install.sh, the script the AWS user data carries verbatim and the image runs, with a
   wheel built from this checkout: Debian's packages, the venv, edgefleet from binary wheels
   (apt reaches the Debian mirror, pip the configured Python index; nothing else);
2. ``edgefleet --version``, the PostgreSQL tools ``edgefleet backup`` would take for the
   database version the script installs them for, TLS-PSK without sslpsk3 (Python 3.13);
3. ``edgefleet serve --migrate`` as the ``edgefleet`` user, as the systemd units run it, on
   SQLite with its embedded Mosquitto, in a network namespace with nothing but its own
   loopback: /healthz and /readyz answer 200.

The clean root is cached as a tarball under ``$EDGEFLEET_INSTALL_CACHE`` (default
``~/.cache/edgefleet/install-test``), in a directory named by the hash of what makes the root
(suite, mirror, mmdebstrap options), with apt's downloaded packages beside it: a warm run
unpacks the root and runs the whole install again, with .deb files from that cache (the install
itself is never cached; pip downloads every wheel again). ``make test-install`` runs this file
alone; timings are in docs/install.md.

Needs root (chroot, mounts, namespaces) and mmdebstrap (``scripts/setup-system.sh test``
installs it); without them the test fails saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "deploy" / "install.sh"
SUITE = "trixie"
"""Debian 13, what the AWS stack's server runs and the image is built on."""
PG_MAJOR = 17
"""The PostgreSQL client the script installs by default (Debian 13's), which the database's
major version must match for ``edgefleet backup``."""
MMDEBSTRAP_OPTIONS = ["--variant=minbase", "--skip=cleanup/apt/lists"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _mirror() -> str:
    """The Debian archive this machine's apt sources use (deb822 or one-line format)."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(f.read_text())
    for text in texts:
        for m in re.finditer(r"(?:URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and uri.endswith("/debian"):
                return uri
    pytest.fail("no Debian archive (an URI ending in /debian) in /etc/apt/sources*", pytrace=False)


def _need(tool: str, hint: str) -> str:
    found = shutil.which(tool, path=os.environ.get("PATH", "") + ":" + PATH)
    if found is None:
        pytest.fail(f"{tool} is needed for the clean-root install test: {hint}", pytrace=False)
    return found


def _cache_dir() -> Path:
    base = os.environ.get("EDGEFLEET_INSTALL_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edgefleet" / "install-test"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_root_tar(mirror: str) -> tuple[Path, Path]:
    """The cached tarball of a clean root, made now if missing, and its cache directory.
    Directories of other keys (an older mirror or recipe) are removed."""
    recipe = json.dumps([SUITE, mirror, MMDEBSTRAP_OPTIONS])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    cache = _cache_dir()
    here = cache / f"{SUITE}-{key}"
    tar = here / "root.tar"
    with _locked(cache / ".lock"):
        for old in cache.glob(f"{SUITE}-*"):
            if old != here:
                shutil.rmtree(old, ignore_errors=True)
        if not tar.exists():
            mmdebstrap = _need(
                "mmdebstrap", "scripts/setup-system.sh test (apt-get install mmdebstrap)"
            )
            here.mkdir(parents=True, exist_ok=True)
            partial = here / "root.tar.partial"
            done = subprocess.run(
                [mmdebstrap, *MMDEBSTRAP_OPTIONS, "--format=tar", SUITE, str(partial), mirror],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"mmdebstrap failed:\n{done.stderr[-4000:]}"
            partial.rename(tar)
            (here / "recipe.json").write_text(recipe + "\n")
    return tar, here


def _wheel(tmp: Path) -> Path:
    """A wheel of this checkout as it is, built from a copy (no build/ left in the tree)."""
    src = tmp / "checkout"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("edgefleet-*.whl")
    return wheel


def _in_root(
    root: Path,
    command: list[str],
    *,
    network: bool,
    binds: dict[Path, str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` chrooted in ``root``, in new mount and PID namespaces (every mount and
    process goes when it ends); without ``network``, in a network namespace of its own too,
    with only a loopback interface."""
    mounts = [
        f"mount --rbind /dev {root}/dev",
        f"mount -t proc proc {root}/proc",
        f"mount -t tmpfs tmpfs {root}/run",
    ]
    for host, inside in (binds or {}).items():
        host.mkdir(parents=True, exist_ok=True)
        (root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind {host} {root}{inside}")
    if not network:
        mounts.insert(0, "ip link set lo up")
    setup = " && ".join(mounts)
    environment = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
    argv = [
        _need("unshare", "apt-get install util-linux"),
        "--mount",
        "--propagation=private",
        "--pid",
        "--fork",
        "--kill-child",
        *([] if network else ["--net"]),
        "/bin/sh",
        "-ec",
        f'{setup} && exec chroot "$0" /usr/bin/env -i "$@"',
        str(root),
        *(f"{k}={v}" for k, v in environment.items()),
        *command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


PROBE = r"""
import json, ssl, subprocess, sys, time, urllib.error, urllib.request

server = subprocess.Popen(
    ["runuser", "-u", "edgefleet", "--", "/opt/edgefleet/bin/edgefleet", "serve", "--migrate"],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
)
result = {}
deadline = time.monotonic() + 180
for path in ("/healthz", "/readyz"):
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:8080" + path, timeout=5) as r:
                result[path] = [r.status, r.read().decode()]
                break
        except urllib.error.HTTPError as e:
            result[path] = [e.code, e.read().decode()]
        except OSError as e:
            result[path] = [None, str(e)]
        if server.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
server.terminate()
try:
    out, _ = server.communicate(timeout=30)
except subprocess.TimeoutExpired:
    server.kill()
    out, _ = server.communicate()
result["exit"] = server.returncode
result["log"] = out[-6000:]
print(json.dumps(result))
"""

CHECKS = r"""
import importlib.util, json, ssl, sys
from edgefleet.services.backup import find_pg_tools
from edgefleet.protocol.psk import psk_client_context
psk_client_context("gateway", "00ff")
print(json.dumps({
    "python": list(sys.version_info[:2]),
    "pg_dump": find_pg_tools(int(sys.argv[1]) * 10000 + 2).version,
    "sslpsk3": importlib.util.find_spec("sslpsk3") is not None,
}))
"""


def _version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


class _Phases:
    """How long each phase took, printed at the end (``pytest -s`` shows it): the figures of
    docs/install.md. Nothing is asserted about them."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self._last = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self._last))
        self._last = now

    def report(self) -> str:
        parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.times)
        return f"clean-root install: {parts}; total {sum(s for _, s in self.times):.0f} s"


def test_install_script_on_a_clean_debian_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the clean-root install test needs root (chroot, mounts)", pytrace=False)
    _need("ip", "apt-get install iproute2")
    phases = _Phases()
    tar, cache = _clean_root_tar(_mirror())
    phases.done("clean root (mmdebstrap, or the cached tarball)")
    wheel = _wheel(tmp_path)
    phases.done("wheel")

    root = tmp_path / "root"
    root.mkdir()
    done = subprocess.run(
        ["tar", "--numeric-owner", "-xpf", str(tar), "-C", str(root)], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert not (root / "usr/bin/python3").exists() and not (root / "usr/bin/gcc").exists()
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    # what a chroot must not do on install: start Debian's services (Mosquitto's) on this host
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # pip inside trusts what pip here trusts (this machine's index may sit behind its own CA)
    ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    shutil.copy2(ca, root / "etc/host-ca.pem")
    shutil.copy2(INSTALL_SH, root / "tmp/install.sh")
    shutil.copy2(wheel, root / "tmp" / wheel.name)
    phases.done("unpack")

    env = {"PIP_CERT": "/etc/host-ca.pem", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if os.environ.get("PIP_INDEX_URL"):
        env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    # apt's downloads are kept; pip's are not (this machine's Python index forbids caching its
    # answers, so pip's HTTP cache stays empty): every run downloads the wheels again
    binds = {cache / "apt-archives": "/var/cache/apt/archives"}
    install = _in_root(
        root,
        ["/bin/bash", "/tmp/install.sh", "--package", f"/tmp/{wheel.name}", "--mosquitto"],
        network=True,
        binds=binds,
        env=env,
        timeout=1500,
    )
    assert install.returncode == 0, f"{install.stdout[-4000:]}\n{install.stderr[-4000:]}"
    phases.done("install.sh")
    assert f"installed: edgefleet {_version()} in /opt/edgefleet" in install.stdout
    # binary wheels only, on a root that never had a compiler
    assert not (root / "usr/bin/gcc").exists() and not (root / "usr/bin/cc").exists()

    version = _in_root(
        root, ["/opt/edgefleet/bin/edgefleet", "--version"], network=False, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == _version()

    checks = _in_root(
        root, ["/opt/edgefleet/bin/python", "-c", CHECKS, str(PG_MAJOR)], network=False, timeout=60
    )
    assert checks.returncode == 0, checks.stderr
    facts = json.loads(checks.stdout)
    assert facts["python"] == [3, 13], facts
    assert facts["pg_dump"].startswith(f"pg_dump (PostgreSQL) {PG_MAJOR}."), facts
    assert facts["sslpsk3"] is False, "the server installed sslpsk3 (it needs no PSK library)"

    phases.done("checks")
    served = _in_root(
        root,
        ["/opt/edgefleet/bin/python", "-c", PROBE],
        network=False,
        env={"EDGEFLEET_DATA_DIR": "/var/lib/edgefleet"},
        timeout=300,
    )
    assert served.returncode == 0, served.stderr
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["/healthz"][0] == 200, result
    assert result["/readyz"][0] == 200, result
    assert any((root / "var/lib/edgefleet").rglob("*.db")), result["log"]
    phases.done("serve until ready, stop")
    print(phases.report())
