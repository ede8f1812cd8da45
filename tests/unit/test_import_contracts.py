"""The import-linter contracts of pyproject.toml (docs/architecture.md): the tree keeps them,
and each one fails when a layer is crossed on purpose, in a copy of the package with one bad
import added, naming the import that broke it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(src: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's configuration over the package under ``src``."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: `make .venv/.installed-test` installs it")
    argv = [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")]
    for contract in contracts:
        argv += ["--contract", contract]
    # the copy comes first on the path, before the editable install's src/
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        argv, cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of src/ (sources only) to break."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "edgefleet",
        src / "edgefleet",
        ignore=shutil.ignore_patterns("__pycache__", "static", "templates", "locale"),
    )
    return src


def add_import(src: Path, module: str, line: str) -> None:
    path = src / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("contract", "module", "line", "reported"),
    [
        # the domain does no I/O and knows nothing of the layers above it
        (
            "domain",
            "edgefleet.domain.devices",
            "import sqlalchemy  # noqa",
            "edgefleet.domain.devices -> sqlalchemy",
        ),
        (
            "domain",
            "edgefleet.domain.tasks",
            "from edgefleet.services import fleet  # noqa",
            "edgefleet.domain.tasks -> edgefleet.services.fleet",
        ),
        # the wire contract stands alone: the agent and the simulator import it too
        (
            "protocol",
            "edgefleet.protocol.messages",
            "from edgefleet.domain import devices  # noqa",
            "edgefleet.protocol.messages -> edgefleet.domain.devices",
        ),
        # services know no web framework and no transport
        (
            "services",
            "edgefleet.services.fleet",
            "import fastapi  # noqa",
            "edgefleet.services.fleet -> fastapi",
        ),
        (
            "services",
            "edgefleet.services.tasks",
            "from edgefleet.web import tasks  # noqa",
            "edgefleet.services.tasks -> edgefleet.web.tasks",
        ),
        (
            "services",
            "edgefleet.services.remote",
            "from edgefleet.mqtt import relay  # noqa",
            "edgefleet.services.remote -> edgefleet.mqtt.relay",
        ),
        # a transport goes through a service, never to a repository or SQL itself
        (
            "transports",
            "edgefleet.web.tasks.groups",
            "from edgefleet.db.repos.groups import GroupRepo  # noqa",
            "edgefleet.web.tasks.groups -> edgefleet.db.repos.groups",
        ),
        (
            "transports",
            "edgefleet.api.routes.devices",
            "from sqlalchemy import select  # noqa",
            "edgefleet.api.routes.devices -> sqlalchemy",
        ),
        # presenters shape answers for the API, the console and the CLI: none of theirs
        (
            "presenters",
            "edgefleet.presenters.devices",
            "from edgefleet.api import deps  # noqa",
            "edgefleet.presenters.devices -> edgefleet.api.deps",
        ),
        (
            "presenters",
            "edgefleet.presenters.tasks",
            "import fastapi  # noqa",
            "edgefleet.presenters.tasks -> fastapi",
        ),
    ],
)
def test_a_crossed_layer_breaks_its_contract(
    package_copy: Path, contract: str, module: str, line: str, reported: str
) -> None:
    assert lint(package_copy, contract).returncode == 0  # the copy keeps it as it is
    add_import(package_copy, module, line)
    result = lint(package_copy, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert reported in result.stdout


def test_a_package_cycle_breaks_the_acyclic_contract(package_copy: Path) -> None:
    assert lint(package_copy, "acyclic").returncode == 0
    # the storage layer reaching up into a service: db -> services -> db
    add_import(package_copy, "edgefleet.db.tables", "from edgefleet.services import fleet  # noqa")
    result = lint(package_copy, "acyclic")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No cycles are allowed in edgefleet." in result.stdout
    assert ".db -> .services" in result.stdout or ".services -> .db" in result.stdout
