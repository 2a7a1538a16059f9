"""The gateway on its own (``ccproxy run gateway``): the routes of ``ccproxy serve``, over an
api-forwarder and auth reached by HTTP."""

from __future__ import annotations

from starlette.applications import Starlette

from ccproxy_core.client_keys import HttpKeyAuthority
from ccproxy_core.forwarding import HttpForwarder
from ccproxy_core.identity import ClosedMount
from ccproxy_core.internal import AuthClient, require_internal_secret
from ccproxy_core.lifespan import closing, lifespan
from ccproxy_core.redis import connect
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_gateway.app import Gateway, create_app
from ccproxy_gateway.sdk_routes import SdkRoutes


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    if not settings.services.forwarder_url:
        raise StartupError(
            "SERVICES__FORWARDER_URL is not set: `ccproxy run gateway` sends requests to an "
            "api-forwarder service (for everything in one process, use `ccproxy serve`)"
        )
    if not settings.services.auth_url:
        raise StartupError("SERVICES__AUTH_URL is not set: the gateway asks auth whether credentials are usable")
    read_timeout = settings.anthropic.read_timeout + 15  # the forwarder's own, and then some
    forwarder = HttpForwarder(settings.services.forwarder_url, secret, read_timeout=read_timeout)
    auth = AuthClient(settings.services.auth_url, secret)
    # Per-member client keys live in auth (Redis); lookups are cached a few seconds here.
    keys = HttpKeyAuthority(settings.services.auth_url, secret) if settings.redis.url else None
    # The process's one Redis client: SDK jobs, stored responses (any replica continues any), the access log.
    redis = connect(settings.redis)
    gateway = Gateway(settings, forwarder, auth.status, keys=keys, redis=redis)
    sdk = SdkRoutes(gateway, redis)
    # Stopped in reverse: what the access log still buffers goes to Redis before Redis is closed.
    parts = [closing(redis.aclose), *([closing(keys.aclose)] if keys is not None else []),
             closing(auth.aclose), closing(forwarder.aclose), closing(gateway.access_log.aclose)]
    return create_app(gateway, extra_routes=[ClosedMount("/sdk", sdk.routes())], lifespan=lifespan(*parts))
