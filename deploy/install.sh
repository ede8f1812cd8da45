#!/bin/bash
# Installs the edgefleet server on a fresh Debian 13 machine, as root: Debian's packages
# (python3-venv; postgresql-client-N for `edgefleet backup`, N the database's major version;
# mosquitto if asked), the system user edgefleet and /var/lib/edgefleet, and edgefleet from
# binary wheels only (no compiler: the server needs no PSK library) in a venv. Runs again to
# upgrade. The AWS user data carries it verbatim, the image runs it, a test runs it in a clean
# Debian root (docs/install.md).
#   install.sh [--package SPEC] [--postgresql-client N|none] [--mosquitto] [--prefix DIR]
#     --package SPEC          a wheel file, an https URL of one, or a requirement (edgefleet)
#     --postgresql-client N   default 17, Debian 13's; none: no client
#     --mosquitto             for the embedded broker of a single-host `edgefleet serve`,
#                             or a broker node (`edgefleet broker-node --run`; with
#                             --postgresql-client none, see deploy/systemd/)
#     --prefix DIR            the venv (/opt/edgefleet), whose bin/ holds `edgefleet`
set -euo pipefail

package=edgefleet
pg_client=17
mosquitto=false
prefix=/opt/edgefleet
while [ $# -gt 0 ]; do
  case "$1" in
    --package) package=${2:?--package needs a value}; shift 2 ;;
    --postgresql-client) pg_client=${2:?--postgresql-client needs a value}; shift 2 ;;
    --mosquitto) mosquitto=true; shift ;;
    --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
    *) echo "install.sh: unknown argument $1 (see the comment at the top of this script)" >&2; exit 2 ;;
  esac
done

fail() { echo "install.sh: $*" >&2; exit 1; }
# the network may not be up yet at first boot, and apt may wait for another apt's lock
retry() { local n=0; until "$@"; do n=$((n + 1)); [ "$n" -lt 5 ] || return 1; sleep $((n * 5)); done; }

[ "$(id -u)" -eq 0 ] || fail "run as root"
# shellcheck source=/dev/null
. /etc/os-release
[ "${ID:-}" = debian ] || fail "this is ${PRETTY_NAME:-not Debian}; the script knows Debian only"
case "$pg_client" in
  none | [1-9][0-9]) ;;
  *) fail "--postgresql-client takes a major version (17) or none, not '$pg_client'" ;;
esac

export DEBIAN_FRONTEND=noninteractive
packages=(ca-certificates python3 python3-venv)
[ "$pg_client" = none ] || packages+=("postgresql-client-$pg_client")
[ "$mosquitto" = false ] || packages+=(mosquitto)
retry apt-get -o DPkg::Lock::Timeout=600 update -q
for p in "${packages[@]}"; do
  apt-cache show "$p" >/dev/null 2>&1 \
    || fail "Debian ${VERSION_ID:-?} has no package $p in this machine's apt sources" \
            "(Debian 13 has postgresql-client-17, Debian 12 postgresql-client-15: the client" \
            "must match the database's major version, or pass --postgresql-client none)"
done
retry apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${packages[@]}"

if [ "$mosquitto" = true ] && [ -d /run/systemd/system ]; then
  # edgefleet (serve, or broker-node --run) starts and supervises a Mosquitto of its own:
  # Debian's service is not needed
  systemctl disable --now mosquitto.service
fi

id edgefleet >/dev/null 2>&1 \
  || useradd --system --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin edgefleet
install -d -o edgefleet -g edgefleet -m 700 /var/lib/edgefleet

[ -x "$prefix/bin/pip" ] || python3 -m venv "$prefix"
# binary wheels only: a dependency that would need a compiler here is an error, not a build
retry "$prefix/bin/pip" install -q --only-binary=:all: --upgrade "$package"

echo "installed: edgefleet $("$prefix/bin/edgefleet" --version) in $prefix"
if [ "$pg_client" != none ]; then
  echo "installed: $("/usr/lib/postgresql/$pg_client/bin/pg_dump" --version)"
fi
