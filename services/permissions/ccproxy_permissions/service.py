"""The permissions service on its own (``ccproxy run permissions``): Redis required, the
internal API behind the shared secret, client keys checked by :func:`key_resolver`."""

from __future__ import annotations

from starlette.applications import Starlette

from ccproxy_core.client_keys import CachedKeys, HttpKeyAuthority
from ccproxy_core.identity import KeyResolver, MemberKeyResolver, SingleTokenResolver
from ccproxy_core.internal import RequireInternalSecret, require_internal_secret
from ccproxy_core.redis import connect
from ccproxy_core.server import StartupError
from ccproxy_core.settings import Settings
from ccproxy_permissions.app import create_app
from ccproxy_permissions.broker import PermissionBroker


def key_resolver(settings: Settings, internal_secret: str) -> KeyResolver:
    """Who a client key belongs to: the holder of ``SECURITY__AUTH_TOKEN`` is the admin, a
    member key (issue 5) is looked up in the auth service (``SERVICES__AUTH_URL``), cached briefly."""
    value = settings.security.auth_token
    token = value.get_secret_value() if value else None
    if not settings.services.auth_url:
        return SingleTokenResolver(token)
    authority = HttpKeyAuthority(settings.services.auth_url, internal_secret)
    return MemberKeyResolver(token, CachedKeys(authority, ttl=settings.security.key_cache_seconds))


def create_service_app(settings: Settings) -> Starlette:
    secret = require_internal_secret(settings)
    if not settings.redis.url:
        raise StartupError(
            "REDIS__URL is not set: permission requests live in Redis so every replica and the "
            "sdk-workers share them (for everything in one process, use `ccproxy serve`)"
        )
    broker = PermissionBroker(settings, connect(settings.redis))
    web = create_app(broker, key_resolver(settings, secret))
    web.add_middleware(RequireInternalSecret, secret=secret)
    return web
