#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (run as root, or with sudo):
# headless Chromium for web pages, docker-compose 1.29 to validate compose.yaml, wrk for the bench.
set -euo pipefail
packages=(chromium docker-compose wrk)
commands=(chromium docker-compose wrk)
missing=()
for i in "${!commands[@]}"; do
  command -v "${commands[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
