#!/usr/bin/env bash
# Installs the Debian packages edgefleet needs, only those that are missing.
#   scripts/setup-system.sh run    what `make run` needs (python3-venv, Mosquitto for the
#                                  embedded broker `edgefleet serve` starts)
#   scripts/setup-system.sh test   what `make test` needs as well (PostgreSQL binaries,
#                                  Mosquitto's command-line clients, and for the browser tests
#                                  in tests/e2e and scripts/screenshots.py Chromium with fonts
#                                  (text, Chinese for the console's zh_TW pages, and colour
#                                  emoji for the console's icons), driven
#                                  by Playwright through /usr/bin/chromium: Playwright's own
#                                  browser download is never used; mmdebstrap for the
#                                  clean-root install test of `make test-install`)
# Needs root or sudo when something is missing; prints what it does.
set -euo pipefail
what=${1:-run}

need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ "$what" = test ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # the reverse proxy of the two-instance test and the compose file's nginx config check
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
  # nginx's TCP proxy: the load balancer in front of the broker nodes in test_broker_partition
  [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
  # the compose broker's PSK-sync script, run by tests/integration/test_deploy_artifacts.py
  command -v wget >/dev/null 2>&1 || need+=(wget)
  # the clean Debian root of the install test (tests/integration/test_install.py)
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
  [ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
  [ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || need+=(fonts-wqy-zenhei)
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
