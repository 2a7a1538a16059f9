"""The permissions service inside ``ccproxy serve``: the public routes on the one app, the
broker on the embedded Redis, and the broker itself as the in-process worker's gate."""

from __future__ import annotations

from redis.asyncio import Redis
from starlette.routing import BaseRoute

from ccproxy_core.settings import Settings
from ccproxy_permissions.app import PermissionsApi, routes
from ccproxy_permissions.broker import PermissionBroker


class EmbeddedPermissions:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.broker = self.gate = PermissionBroker(settings, redis)

    def routes(self) -> list[BaseRoute]:
        """Only the public ones: the worker in this process needs no internal API."""
        return routes(PermissionsApi(self.broker), internal=False)

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()
