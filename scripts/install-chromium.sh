#!/usr/bin/env bash
# Headless Chromium for the admin page tests, from Debian's packages.
# Needs root (CI and the dev machines run as root); elsewhere it says what to do.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium is not installed: run 'sudo apt-get install chromium' (the browser tests skip without it)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
