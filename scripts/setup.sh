#!/usr/bin/env bash
# Installs what `ccproxy serve` needs, from the repo's own pinned files:
# uv (pinned), the Python dependencies (uv.lock), the Claude Code CLI (package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  python3 -m pip install --quiet "uv==$UV_VERSION"
fi
uv sync --frozen --quiet

if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: npm not found; the Claude Code CLI (SDK mode) will be missing" >&2
fi
