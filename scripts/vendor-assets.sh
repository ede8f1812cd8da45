#!/usr/bin/env bash
# Fetch the console's third-party browser files from the npm registry (pinned versions),
# check them against the committed SHA256SUMS, and copy them into the package. The files are
# committed: nothing is fetched at install or run time, and no page loads from a CDN.
# Run it only to change a version (then update SHA256SUMS with --update).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=src/edgefleet/web/static/vendor
packages=(
  "htmx.org@2.0.11:package/dist/htmx.min.js:htmx.min.js"
  "htmx-ext-json-enc@2.0.3:package/dist/json-enc.min.js:json-enc.min.js"
  "chart.js@4.6.1:package/dist/chart.umd.min.js:chart.umd.min.js"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${packages[@]}"; do
  IFS=: read -r spec inner name <<<"$entry"
  (cd "$work" && npm pack -q "$spec" >/dev/null)
  tarball=$(ls "$work"/*.tgz)
  tar xzf "$tarball" -C "$work" "$inner"
  cp "$work/$inner" "$work/$name"
  rm -rf "$work/package" "$tarball"
done
if [[ "${1:-}" == "--update" ]]; then
  (cd "$work" && sha256sum htmx.min.js json-enc.min.js chart.umd.min.js) >"$dest/SHA256SUMS"
fi
(cd "$work" && sha256sum -c "$OLDPWD/$dest/SHA256SUMS")
cp "$work"/*.js "$dest/"
echo "vendored into $dest"
