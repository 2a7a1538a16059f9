# syntax=docker/dockerfile:1
# Every ccproxy image, one target per service (compose.yaml's `build.target`):
#     docker build --target gateway -t ccproxy/gateway .       (from the repository root)
# Targets: gateway, api-forwarder, auth, permissions, analytics, sdk-worker. Each installs only
# its service's dependencies (uv sync --package ccproxy-<name>) into a virtualenv that the runtime
# stage copies without uv, the sources or the build tools. The steps they share are written once
# (the `source` and `runtime` stages); a builder builds only the stages its target needs.
# Base images are build arguments, so a host that cannot pull them can name its own.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:22-bookworm-slim

# --- build: uv, the lock file and the sources ---------------------------------------------------
FROM ${PYTHON_IMAGE} AS source
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services

FROM source AS venv-gateway
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --no-editable --package ccproxy-gateway

FROM source AS venv-api-forwarder
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --no-editable --package ccproxy-api-forwarder

FROM source AS venv-auth
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --no-editable --package ccproxy-auth

FROM source AS venv-permissions
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --no-editable --package ccproxy-permissions

# Without the [embedded] chDB extra: the image always talks to a ClickHouse server (CLICKHOUSE__URL).
FROM source AS venv-analytics
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --no-editable --package ccproxy-analytics

# claude-agent-sdk's wheel bundles its own CLI (~385 MB); the worker runs the pinned one
# (CLAUDE__CLI_PATH, from the cli stage), so the bundled copy is removed.
FROM source AS venv-sdk-worker
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package ccproxy-sdk-worker \
    && rm -rf /opt/venv/lib/python*/site-packages/claude_agent_sdk/_bundled

# The Claude Code CLI, pinned by the repo's package.json / package-lock.json (npm ci); its install
# script links the CLI binary for this platform (a registry package).
FROM ${NODE_IMAGE} AS cli
WORKDIR /opt/claude
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && ./node_modules/.bin/claude --version

# --- runtime: what every service image has -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 ccproxy \
    && useradd --system --uid 10001 --gid ccproxy --home-dir /home/ccproxy --create-home ccproxy \
    && chmod 755 /home/ccproxy
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/ccproxy \
    PYTHONUNBUFFERED=1 \
    SERVER__HOST=0.0.0.0 \
    SERVER__PORT=8000
USER ccproxy
WORKDIR /home/ccproxy
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 CMD ["ccproxy", "healthcheck"]

# The public API (client auth, translation, dispatch) behind Traefik.
FROM runtime AS gateway
COPY --from=venv-gateway /opt/venv /opt/venv
CMD ["ccproxy", "run", "gateway"]

# One Anthropic request in, the upstream's answer streamed out.
FROM runtime AS api-forwarder
COPY --from=venv-api-forwarder /opt/venv /opt/venv
CMD ["ccproxy", "run", "api-forwarder"]

# Upstream credentials and their single-flight refresh; accounts and client keys. Any uid may run
# this image (compose may set the host user's, to share ~/.claude), so the state directories are
# writable by all; the files in them are 0600.
FROM runtime AS auth
USER root
RUN mkdir -p /data/claude /data/ccproxy \
    && chown ccproxy:ccproxy /data/claude /data/ccproxy \
    && chmod 1777 /data/claude /data/ccproxy
USER ccproxy
COPY --from=venv-auth /opt/venv /opt/venv
ENV AUTH__CLAUDE_CONFIG_DIR=/data/claude \
    AUTH__USE_KEYRING=false \
    DATA_DIR=/data/ccproxy
CMD ["ccproxy", "run", "auth"]

# Tool-permission requests (Redis), the SSE stream, the approval page.
FROM runtime AS permissions
COPY --from=venv-permissions /opt/venv /opt/venv
CMD ["ccproxy", "run", "permissions"]

# Access-log events from the Redis stream into ClickHouse, and the log API.
FROM runtime AS analytics
COPY --from=venv-analytics /opt/venv /opt/venv
CMD ["ccproxy", "run", "analytics"]

# Runs Claude Code (claude-agent-sdk) for SDK-mode requests taken from the arq queue in Redis: the
# only image with Node and the Claude Code CLI.
FROM runtime AS sdk-worker
USER root
# git: Claude Code reads the workspace's repository state; Node (from the cli stage): MCP servers
# configured with `npx ...` and tools that run JavaScript.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=cli /usr/local/bin/node /usr/local/bin/node
COPY --from=cli /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
COPY --from=cli /opt/claude /opt/claude
COPY --from=venv-sdk-worker /opt/venv /opt/venv
# Compose runs Claude Code as the host user's uid (CCPROXY_UID, CLAUDE__RUN_AS_USER), not only
# 10001: the workspace (which seeds its volume) is writable by any uid, sticky like /tmp, so files
# stay their writer's. No upstream credential is here: Claude Code calls the gateway with a token
# of its run only (docs/stack.md). HOME stays root's and read-only, like the
# working directory: the worker reads settings (.ccproxy.toml, ~/.config/ccproxy) from neither,
# and Claude Code cannot plant one there; npm/npx (MCP servers) cache under /tmp.
# /etc/ccproxy/secrets: where compose mounts the worker's secret files; only root may enter it,
# so Claude Code's user cannot read them even where it owns the files (made by `make env`).
RUN rm -rf /home/ccproxy && install -d -o root -g root -m 0755 /home/ccproxy \
    && mkdir -p /workspace \
    && install -d -o root -g root -m 0700 /etc/ccproxy/secrets \
    && chown ccproxy:ccproxy /workspace \
    && chmod 1777 /workspace
ENV PATH=/opt/venv/bin:/opt/claude/node_modules/.bin:$PATH \
    CLAUDE__CLI_PATH=/opt/claude/node_modules/.bin/claude \
    CLAUDE__WORKSPACE_ROOT=/workspace \
    DISABLE_AUTOUPDATER=1 \
    NPM_CONFIG_CACHE=/tmp/.npm
# Alone (docker run) it runs as ccproxy, Claude Code too; compose starts it as root without
# capabilities but the few `CLAUDE__RUN_AS_USER` needs (compose.yaml).
USER ccproxy
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["ccproxy", "healthcheck"]
CMD ["ccproxy", "run", "sdk-worker"]
