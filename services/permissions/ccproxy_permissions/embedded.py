"""The permissions service inside ``ccproxy serve``: the public routes on the one app, the
broker on the embedded Redis, and an in-process gate for the in-process sdk-worker."""

from __future__ import annotations

from redis.asyncio import Redis
from starlette.routing import Route

from ccproxy_core.identity import KeyLookup, KeyResolver, MemberKeyResolver, SingleTokenResolver
from ccproxy_core.settings import Settings
from ccproxy_permissions.app import PermissionsApi, routes
from ccproxy_permissions.broker import LocalPermissionGate, PermissionBroker


class EmbeddedPermissions:
    def __init__(self, settings: Settings, redis: Redis, keys: KeyLookup | None = None) -> None:
        value = settings.security.auth_token
        token = value.get_secret_value() if value else None
        resolver: KeyResolver = MemberKeyResolver(token, keys) if keys is not None else SingleTokenResolver(token)
        self.broker = PermissionBroker(settings, redis)
        self.api = PermissionsApi(self.broker, resolver)
        self.gate = LocalPermissionGate(self.broker)

    def routes(self) -> list[Route]:
        """Only the public ones: the worker in this process needs no internal API."""
        return routes(self.api, internal=False)

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()
