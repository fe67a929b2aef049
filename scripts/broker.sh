#!/usr/bin/env bash
# broker.sh makes a local RabbitMQ ready on 127.0.0.1 for agentq:
# STOMP on 61613, Web-STOMP on ws://127.0.0.1:15674/ws, guest/guest, vhost /.
# Idempotent: on a running broker it returns after one quick check.
set -euo pipefail

log() { echo "broker: $*" >&2; }

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  if [ "$(id -u)" != 0 ]; then
    log "rabbitmq-server is not installed and we are not root: install it (apt-get install rabbitmq-server) and run again"
    exit 1
  fi
  log "installing rabbitmq-server from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq rabbitmq-server >/dev/null
fi
export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"

# Only listen on loopback, and never start the distribution port on all
# interfaces. The config file is ours only if we wrote it.
conf=/etc/rabbitmq/rabbitmq.conf
if [ "$(id -u)" = 0 ] && { [ ! -f "$conf" ] || grep -q '^# agentq' "$conf"; }; then
  want='# agentq: local broker for development and tests (scripts/broker.sh)
listeners.tcp.1 = 127.0.0.1:5672
stomp.listeners.tcp.1 = 127.0.0.1:61613
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = 15674
distribution.listener.interface = 127.0.0.1
'
  if [ "$(cat "$conf" 2>/dev/null)" != "$(printf '%s' "$want")" ]; then
    mkdir -p /etc/rabbitmq
    printf '%s' "$want" >"$conf"
  fi
fi

if rabbitmqctl -q status >/dev/null 2>&1; then
  if rabbitmq-plugins -q is_enabled rabbitmq_stomp rabbitmq_web_stomp >/dev/null 2>&1; then
    exit 0
  fi
  rabbitmq-plugins -q enable rabbitmq_stomp rabbitmq_web_stomp >/dev/null
  exit 0
fi

log "enabling STOMP plugins and starting rabbitmq-server"
rabbitmq-plugins -q --offline enable rabbitmq_stomp rabbitmq_web_stomp >/dev/null
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
  # Debian's service user owns the data directory.
  su -s /bin/sh rabbitmq -c 'rabbitmq-server -detached' >/dev/null 2>&1 || rabbitmq-server -detached
else
  rabbitmq-server -detached
fi
# await_startup fails at once while the node is not yet known to epmd, so
# ask again until it answers (bounded: two minutes).
for _ in $(seq 1 60); do
  if rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1; then
    log "ready: stomp://guest:guest@127.0.0.1:61613  ws://127.0.0.1:15674/ws"
    exit 0
  fi
  sleep 2
done
log "rabbitmq-server did not start within two minutes; see /var/log/rabbitmq/"
exit 1
