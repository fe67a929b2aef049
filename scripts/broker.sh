#!/usr/bin/env bash
# broker.sh makes a local RabbitMQ ready on 127.0.0.1 for agentq:
# AMQP on 5672, STOMP on 61613, Web-STOMP on ws://127.0.0.1:15674/ws,
# MQTT on 1883, Web-MQTT on ws://127.0.0.1:15675/ws, the management API on
# http://127.0.0.1:15672; guest/guest, vhost /.
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
mqtt.listeners.tcp.1 = 127.0.0.1:1883
web_mqtt.tcp.ip = 127.0.0.1
web_mqtt.tcp.port = 15675
# RabbitMQ lets an MQTT connection have 10 unacknowledged messages by
# default; agentq acknowledges after each group commit, so give it room.
mqtt.prefetch = 1000
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
distribution.listener.interface = 127.0.0.1
'
  if [ "$(cat "$conf" 2>/dev/null)" != "$(printf '%s' "$want")" ]; then
    mkdir -p /etc/rabbitmq
    printf '%s' "$want" >"$conf"
    changed=1
  fi
fi

plugins="rabbitmq_stomp rabbitmq_web_stomp rabbitmq_mqtt rabbitmq_web_mqtt rabbitmq_management"
if rabbitmqctl -q status >/dev/null 2>&1; then
  if [ -z "${changed:-}" ]; then
    if rabbitmq-plugins -q is_enabled $plugins >/dev/null 2>&1; then
      exit 0
    fi
    rabbitmq-plugins -q enable $plugins >/dev/null
    exit 0
  fi
  # Listeners are read at boot: a changed configuration needs a restart.
  log "configuration changed: restarting rabbitmq-server"
  rabbitmqctl -q stop >/dev/null 2>&1 || true
fi

log "enabling plugins ($plugins) and starting rabbitmq-server"
rabbitmq-plugins -q --offline enable $plugins >/dev/null
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
    log "ready: stomp://guest:guest@127.0.0.1:61613  ws://127.0.0.1:15674/ws  amqp://guest:guest@127.0.0.1:5672/  mqtt://guest:guest@127.0.0.1:1883"
    exit 0
  fi
  sleep 2
done
log "rabbitmq-server did not start within two minutes; see /var/log/rabbitmq/"
exit 1
