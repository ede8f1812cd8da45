#!/bin/sh
# Entry point of the `broker` service (eclipse-mosquitto, openssl build, started as root;
# Mosquitto itself drops to the mosquitto user).
#
# 1. Fills the run directory (a tmpfs) with what mosquitto.conf names: the ACL, the server's
#    password file (hashed by mosquitto_passwd, as `edgefleet broker-config mosquitto` does)
#    and an empty PSK store, then starts Mosquitto.
# 2. Keeps the PSK store equal to the server's: every PSK_SYNC_SECONDS it asks
#    GET /api/v1/broker/psk-file?since=<cursor> with the broker-scope token the `broker-token`
#    job wrote, and gets only the keys set and removed since its last answer (every key the
#    first time, and every PSK_FULL_SECONDS, 600, to be safe). When the store changed it
#    replaces the file (rename, so the broker never reads half of it) and sends SIGHUP, on
#    which Mosquitto re-reads it. The server cannot signal a broker in another container;
#    this loop is how PSKs get here. A gateway whose key was deleted or replaced and that is
#    still connected is disconnected by taking over its client id on the server listener, as
#    the embedded broker does.
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
full_every=${PSK_FULL_SECONDS:-600}
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
        echo "edgefleet psk sync: closed the session of gateway $1 (its key was deleted or replaced)"
    else
        echo "edgefleet psk sync: could not close the session of gateway $1"
    fi
}

# what the server answered to ?since=: "# cursor=<n> full|changes", then key lines
# ("<uuid>:<hex>", every key when full) and, for changes, "-<uuid>" for a removed key
cursor=
last_full=0

sync_psks() {
    if [ ! -s "$token_file" ]; then
        report waiting "waiting for the broker token ($token_file; the broker-token job writes it)"
        return 0
    fi
    now=$(date +%s)
    since=$cursor
    if [ $((now - last_full)) -ge "$full_every" ]; then
        since=
    fi
    answer="$run_dir/psk.answer"
    if ! wget -q -T 10 -O "$answer" --header "mx-api-token: $(cat "$token_file")" \
        "$psk_url?since=$since"; then
        rm -f "$answer"
        report failing "cannot fetch $psk_url (server down, or the token revoked?); retrying"
        return 0
    fi
    head=$(head -n 1 "$answer")
    case $head in
        "# cursor="*" full") mode=full ;;
        "# cursor="*" changes") mode=changes ;;
        *) mode= ;;
    esac
    next=${head#"# cursor="}
    next=${next%% *}
    case $next in
        '' | *[!0-9]*) mode= ;;
    esac
    if [ -z "$mode" ]; then
        rm -f "$answer"
        report failing "unexpected answer from $psk_url; retrying"
        return 0
    fi
    if [ "$mode" = full ]; then
        last_full=$now
    elif [ "$(wc -l < "$answer")" -le 1 ]; then
        rm -f "$answer"  # nothing changed
        cursor=$next
        report ok "in sync with $psk_url"
        return 0
    fi
    new="$run_dir/psk.new"
    # the store after the answer, and in ids.gone the gateways whose key is gone or replaced
    awk -v mode="$mode" -v gone="$run_dir/ids.gone" '
        FILENAME == ARGV[1] {
            i = index($0, ":")
            if (i > 1) old[substr($0, 1, i - 1)] = substr($0, i + 1)
            next
        }
        FNR == 1 { next }
        /^-/ { id = substr($0, 2); removed[id] = 1; delete keys[id]; next }
        {
            i = index($0, ":")
            if (i > 1) { id = substr($0, 1, i - 1); keys[id] = substr($0, i + 1); delete removed[id] }
        }
        END {
            if (mode == "changes")
                for (id in old) if (!(id in keys) && !(id in removed)) keys[id] = old[id]
            printf "" > gone
            for (id in old) if (!(id in keys) || keys[id] != old[id]) print id > gone
            for (id in keys) print id ":" keys[id]
        }' "$run_dir/psk.txt" "$answer" | sort > "$new"
    rm -f "$answer"
    if ! cmp -s "$new" "$run_dir/psk.txt"; then
        if [ "$(id -u)" = 0 ]; then
            chown "$broker_user:$broker_user" "$new"
        fi
        mv "$new" "$run_dir/psk.txt"
        kill -HUP "$broker"
        echo "edgefleet psk sync: store updated, $(wc -l < "$run_dir/psk.txt") gateway key(s)"
        # gateways whose key is gone or replaced may still be connected: take over their
        # client id on the server listener, which closes their session, as the embedded
        # broker does; after a moment, so that a quick reconnect meets the reloaded store
        if [ -s "$run_dir/ids.gone" ]; then
            sleep 1
            while read -r gone; do
                kick "$gone"
            done < "$run_dir/ids.gone"
        fi
    else
        rm -f "$new"
    fi
    cursor=$next
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
