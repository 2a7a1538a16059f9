#!/usr/bin/env bash
# The container test (tests/containers): builds every image from the repository's Dockerfile and
# runs compose.yaml with podman + podman-compose, through Traefik's published port. Base images
# that cannot be pulled are replaced by stand-ins built from Debian packages (kept in podman's
# storage for the next run). Needs root (rootful podman) and the packages setup-test-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-deps.sh
export CCPROXY_COMPOSE_TEST=1
exec uv run --frozen pytest -p no:cacheprovider -q -rs tests/containers "$@"
