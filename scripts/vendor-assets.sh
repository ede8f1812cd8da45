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
  # the map (docs/console.md, "Map"): Leaflet, its marker clustering, and the offline
  # basemap: Natural Earth's country outlines (1:50m) as TopoJSON, and its decoder
  "leaflet@1.9.4:package/dist/leaflet.js:leaflet.js"
  "leaflet@1.9.4:package/dist/leaflet.css:leaflet.css"
  "leaflet.markercluster@1.5.3:package/dist/leaflet.markercluster.js:leaflet.markercluster.js"
  "leaflet.markercluster@1.5.3:package/dist/MarkerCluster.css:MarkerCluster.css"
  "world-atlas@2.0.2:package/countries-50m.json:countries-50m.json"
  "topojson-client@3.1.0:package/dist/topojson-client.min.js:topojson-client.min.js"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
names=()
for entry in "${packages[@]}"; do
  IFS=: read -r spec inner name <<<"$entry"
  (cd "$work" && npm pack -q "$spec" >/dev/null)
  tarball=$(ls "$work"/*.tgz)
  tar xzf "$tarball" -C "$work" "$inner"
  cp "$work/$inner" "$work/$name"
  rm -rf "$work/package" "$tarball"
  names+=("$name")
done
if [[ "${1:-}" == "--update" ]]; then
  (cd "$work" && sha256sum "${names[@]}") >"$dest/SHA256SUMS"
fi
(cd "$work" && sha256sum -c "$OLDPWD/$dest/SHA256SUMS")
(cd "$work" && cp "${names[@]}" "$OLDPWD/$dest/")
echo "vendored into $dest"
