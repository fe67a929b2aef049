#!/usr/bin/env bash
# mosquitto.sh makes a local Mosquitto 2.0 ready for agentq's MQTT tests:
# MQTT on 127.0.0.1:${AGENTQ_MOSQUITTO_PORT:-1884}, MQTT over TLS on
# 127.0.0.1:${AGENTQ_MOSQUITTO_TLS_PORT:-8884} (a throwaway CA in
# $dir/tls/ca.pem) and WebSocket on
# ws://127.0.0.1:${AGENTQ_MOSQUITTO_WS_PORT:-9884}/, anonymous access,
# persistence on (a persistent session survives a broker restart).
# RabbitMQ's MQTT plugin has 1883, so this one takes 1884. (Mosquitto 2.0.11
# binds its WebSocket listener on every interface whatever the address;
# the tests only ever connect to 127.0.0.1.)
# Idempotent: on a running broker it returns after one quick check.
set -euo pipefail

log() { echo "mosquitto: $*" >&2; }
port=${AGENTQ_MOSQUITTO_PORT:-1884}
wsport=${AGENTQ_MOSQUITTO_WS_PORT:-9884}
tlsport=${AGENTQ_MOSQUITTO_TLS_PORT:-8884}
dir=${AGENTQ_MOSQUITTO_DIR:-/var/tmp/agentq-mosquitto}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" != 0 ]; then
    log "mosquitto is not installed and we are not root: install it (apt-get install mosquitto) and run again"
    exit 1
  fi
  log "installing mosquitto from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq mosquitto >/dev/null
fi
export PATH="$PATH:/usr/sbin"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
up() { listening "$port" && listening "$tlsport"; }
if up; then
  exit 0
fi
# Started by an older version of this script (no TLS listener): restart.
if [ -f "$dir/mosquitto.pid" ]; then
  kill "$(cat "$dir/mosquitto.pid")" 2>/dev/null || true
  for _ in $(seq 1 50); do listening "$port" || break; sleep 0.1; done
fi

mkdir -p "$dir/data" "$dir/tls"
# A throwaway CA and a server certificate for 127.0.0.1, for mqtts:// tests.
if [ ! -f "$dir/tls/server.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=agentq test CA" \
    -keyout "$dir/tls/ca.key" -out "$dir/tls/ca.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/tls/server.key" -out "$dir/tls/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/tls/san.ext"
  openssl x509 -req -in "$dir/tls/server.csr" -CA "$dir/tls/ca.pem" -CAkey "$dir/tls/ca.key" -CAcreateserial \
    -days 3650 -extfile "$dir/tls/san.ext" -out "$dir/tls/server.pem" >/dev/null 2>&1
fi
cat >"$dir/mosquitto.conf" <<CONF
# agentq: local broker for development and tests (scripts/mosquitto.sh)
per_listener_settings false
allow_anonymous true
persistence true
persistence_location $dir/data/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 1000
log_dest file $dir/mosquitto.log
pid_file $dir/mosquitto.pid
listener $port 127.0.0.1
listener $wsport 127.0.0.1
protocol websockets
listener $tlsport 127.0.0.1
cafile $dir/tls/ca.pem
certfile $dir/tls/server.pem
keyfile $dir/tls/server.key
CONF
# Started as root, mosquitto drops to its own user: let it write there.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  chown -R mosquitto "$dir"
fi
log "starting mosquitto on 127.0.0.1:$port (ws $wsport)"
mosquitto -c "$dir/mosquitto.conf" -d
for _ in $(seq 1 50); do
  if up; then
    log "ready: mqtt://127.0.0.1:$port  mqtts://127.0.0.1:$tlsport  mqtt+ws://127.0.0.1:$wsport/"
    exit 0
  fi
  sleep 0.2
done
log "mosquitto did not start; see $dir/mosquitto.log"
exit 1
