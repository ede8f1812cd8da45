#!/bin/sh
# Entry point of the `broker` service (eclipse-mosquitto, openssl build, started as root;
# Mosquitto itself drops to the mosquitto user).
#
# 1. Fills the run directory (a tmpfs) with what mosquitto.conf names: the ACL, the server's
#    password file (hashed by mosquitto_passwd, as `edgefleet broker-config mosquitto` does)
#    and an empty PSK store, then starts Mosquitto.
# 2. Keeps the PSK store equal to the server's: every PSK_SYNC_SECONDS it fetches
#    GET /api/v1/broker/psk-file (Mosquitto's psk_file format) with the broker-scope token the
#    `broker-token` job wrote, and when the store changed it replaces the file (rename, so the
#    broker never reads half of it) and sends SIGHUP, on which Mosquitto re-reads it. The
#    server cannot signal a broker in another container; this loop is how PSKs get here.
#    A gateway whose key disappeared (deleted) is disconnected by taking over its client id
#    on the server listener, as the embedded broker does.
#
# Every path can be moved by the environment, so the test suite runs this script against
# Debian's Mosquitto and a real edgefleet server.
set -eu

conf_dir=${BROKER_CONF_DIR:-/etc/edgefleet-broker}
run_dir=${BROKER_RUN_DIR:-/mosquitto/run}
conf=${BROKER_CONF:-$conf_dir/mosquitto.conf}
token_file=${BROKER_TOKEN_FILE:-/run/edgefleet-token/broker.token}
psk_url=${EDGEFLEET_URL:-http://edgefleet:8080}/api/v1/broker/psk-file
interval=${PSK_SYNC_SECONDS:-5}
broker_user=${BROKER_OS_USER:-mosquitto}
# the server's MQTT user: EDGEFLEET_MQTT__SERVER_USERNAME's default, named in acl.txt too
server_user=edgefleet-server
# the server listener of mosquitto.conf (EDGEFLEET_MQTT__SERVER_PORT in compose.yaml)
server_port=${BROKER_SERVER_PORT:-18830}
: "${MQTT_SERVER_PASSWORD:?MQTT_SERVER_PASSWORD must be set (see .env.example)}"

umask 077
mkdir -p "$run_dir"
cp "$conf_dir/acl.txt" "$run_dir/acl.txt"
printf '%s:%s\n' "$server_user" "$MQTT_SERVER_PASSWORD" > "$run_dir/passwd"
mosquitto_passwd -U "$run_dir/passwd"
: > "$run_dir/psk.txt"
if [ "$(id -u)" = 0 ]; then
    chown -R "$broker_user:$broker_user" "$run_dir"
fi

mosquitto -c "$conf" &
broker=$!
trap 'kill -TERM "$broker" 2>/dev/null || true' TERM INT

state=waiting
report() {
    # one line per change of state, not one per attempt
    if [ "$1" != "$state" ]; then
        state=$1
        echo "edgefleet psk sync: $2"
    fi
}

kick() {
    if mosquitto_sub -h 127.0.0.1 -p "$server_port" -u "$server_user" -P "$MQTT_SERVER_PASSWORD" \
        -i "$1" -t "\$ThingsPro/devices/$1/kick" -E -W 5 >/dev/null 2>&1; then
        echo "edgefleet psk sync: closed the session of deleted gateway $1"
    else
        echo "edgefleet psk sync: could not close the session of deleted gateway $1"
    fi
}

sync_psks() {
    if [ ! -s "$token_file" ]; then
        report waiting "waiting for the broker token ($token_file; the broker-token job writes it)"
        return 0
    fi
    new="$run_dir/psk.new"
    if ! wget -q -T 10 -O "$new" --header "mx-api-token: $(cat "$token_file")" "$psk_url"; then
        rm -f "$new"
        report failing "cannot fetch $psk_url (server down, or the token revoked?); retrying"
        return 0
    fi
    if ! cmp -s "$new" "$run_dir/psk.txt"; then
        cut -d: -f1 "$run_dir/psk.txt" > "$run_dir/ids.old"
        cut -d: -f1 "$new" > "$run_dir/ids.new"
        if [ "$(id -u)" = 0 ]; then
            chown "$broker_user:$broker_user" "$new"
        fi
        mv "$new" "$run_dir/psk.txt"
        kill -HUP "$broker"
        echo "edgefleet psk sync: store updated, $(wc -l < "$run_dir/psk.txt") gateway key(s)"
        # gateways whose key is gone (deleted) may still be connected: take over their client
        # id on the server listener, which closes their session, as the embedded broker does;
        # after a moment, so that a quick reconnect meets the reloaded store
        grep -vxF -f "$run_dir/ids.new" "$run_dir/ids.old" > "$run_dir/ids.gone" || true
        if [ -s "$run_dir/ids.gone" ]; then
            sleep 1
            while read -r gone; do
                kick "$gone"
            done < "$run_dir/ids.gone"
        fi
    else
        rm -f "$new"
    fi
    report ok "in sync with $psk_url"
}

while kill -0 "$broker" 2>/dev/null; do
    sync_psks
    # sleep in the background so that SIGTERM (docker stop) is handled at once
    sleep "$interval" &
    wait $! || true
done
status=0
wait "$broker" || status=$?
exit "$status"
