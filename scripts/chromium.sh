#!/usr/bin/env bash
# chromium.sh installs Debian's chromium for the dashboard's browser tests
# (as root, if missing). Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium: not installed and we are not root: apt-get install chromium, then run again" >&2
  exit 1
fi
echo "chromium: installing from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
