#!/bin/sh
# Entry point of the one-shot `broker-token` job (the edgefleet image, after the server is
# healthy, so the first admin exists): makes the `broker`-scope API token with which the
# broker container fetches the PSK store (GET /api/v1/broker/psk-file), into the
# `broker-token` volume (mode 600). Made once: later runs keep it. To replace it (revoked,
# or the admin it belongs to is gone), delete the file and run the job again:
#   docker compose run --rm --entrypoint rm broker-token /var/lib/edgefleet/broker.token
#   docker compose up -d broker-token
set -eu

token=${BROKER_TOKEN_FILE:-/var/lib/edgefleet/broker.token}
if [ -s "$token" ]; then
    echo "broker token already made ($token)"
    exit 0
fi
umask 077
edgefleet tokens create --user "$EDGEFLEET_ADMIN_EMAIL" --scope broker \
    --description "deploy/compose: the broker's PSK sync" > "$token.new"
mv "$token.new" "$token"
echo "broker token made ($token)"
