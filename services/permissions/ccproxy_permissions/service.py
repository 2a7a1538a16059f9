"""The permissions service on its own (``ccproxy run permissions``): Redis required, the
internal API behind the shared secret, client keys checked by :func:`~ccproxy_core.identity.key_backend`."""

from __future__ import annotations

from starlette.applications import Starlette

from ccproxy_core.identity import key_backend
from ccproxy_core.internal import RequireInternalSecret, require_internal_secret
from ccproxy_core.lifespan import closing
from ccproxy_core.redis import connect
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_permissions.app import create_app
from ccproxy_permissions.broker import PermissionBroker


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    if not settings.redis.url:
        raise StartupError(
            "REDIS__URL is not set: permission requests live in Redis so every replica and the "
            "sdk-workers share them (for everything in one process, use `ccproxy serve`)"
        )
    redis = connect(settings.redis)  # this process's one client
    broker = PermissionBroker(settings, redis)
    web = create_app(broker, key_backend(settings, secret), [closing(redis.aclose)], settings.security.metrics_token)
    web.add_middleware(RequireInternalSecret, secret=secret)
    return web
