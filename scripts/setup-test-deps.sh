#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (run as root, or with sudo):
# headless Chromium for web pages, docker-compose 1.29 to validate compose.yaml, wrk for the bench,
# and for the container test (make compose-test): podman with runc, netavark and aardvark-dns (its
# network; netavark needs iptables), catatonit (init: true) and mmdebstrap (Debian rootfs for stand-in base images).
set -euo pipefail
packages=(chromium docker-compose wrk podman runc netavark aardvark-dns iptables mmdebstrap catatonit)
checks=(chromium docker-compose wrk podman runc /usr/lib/podman/netavark /usr/lib/podman/aardvark-dns iptables
        mmdebstrap /usr/libexec/podman/catatonit)
missing=()
for i in "${!checks[@]}"; do
  if [[ "${checks[$i]}" == /* ]]; then
    [ -x "${checks[$i]}" ] || missing+=("${packages[$i]}")
  else
    command -v "${checks[$i]}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${checks[$i]}" >/dev/null 2>&1 \
      || missing+=("${packages[$i]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
