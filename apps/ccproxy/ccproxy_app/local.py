"""``ccproxy serve``'s wiring: every service in one process, on the embedded defaults.

The composition root is the one place that imports several services: it builds each from the
same settings and hands them what they share (the account pool, the gateway's metrics, one
Redis), with in-process implementations where the stack has HTTP ones.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from ccproxy_analytics.service import Analytics
from ccproxy_auth.admin import local_accounts, web_routes
from ccproxy_core.identity import ClosedMount
from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.redis import connect
from ccproxy_core.settings import Settings
from ccproxy_forwarder.forwarder import ApiForwarder
from ccproxy_gateway.app import Gateway, create_app
from ccproxy_gateway.response_store import ResponseStore
from ccproxy_gateway.sdk_routes import SdkRoutes
from ccproxy_permissions.app import EmbeddedPermissions
from ccproxy_sdk_worker.permissions import permission_hook
from ccproxy_sdk_worker.worker import in_process as sdk_worker


def build_local_app(settings: Settings) -> Starlette:
    """Gateway, api-forwarder, auth, sdk-worker, permissions and analytics in one app."""
    # The process's one Redis client (the embedded stand-in unless REDIS__URL), handed to every
    # part: the account pool and client keys, SDK jobs, permissions, stored responses, the access log.
    redis = connect(settings.redis)
    # The account pool (named accounts, else the CLI login) and, with REDIS__URL, client keys.
    tokens, keys = local_accounts(settings, redis)
    forwarder = ApiForwarder(settings.anthropic, tokens)
    responses = ResponseStore(redis, settings.responses, settings.redis.key_prefix)
    gateway = Gateway(settings, forwarder, tokens.status, keys=keys, responses=responses, redis=redis)
    tokens.attach_metrics(gateway.metrics)
    # The access log: gateway -> (embedded) Redis stream -> analytics -> chDB, /logs/* mounted here.
    analytics = Analytics(settings, redis, metrics=gateway.metrics)
    # SDK mode: the same arq worker as `ccproxy run sdk-worker`, in process, on the embedded Redis.
    sdk = SdkRoutes(gateway, redis)
    # Tool permissions: /permissions/* on this app, the worker's prompts answered in process.
    permissions = EmbeddedPermissions(settings, redis)
    # One app, one caller: the gateway's backend resolves the key once for /api, /sdk,
    # /permissions and /logs alike, and their closed mounts (below) refuse anonymous callers.
    # Started in this order, stopped in reverse; a part that fails to start stops those before it.
    parts = lifespan(
        closing(redis.aclose),
        closing(forwarder.aclose),
        running(analytics.start, analytics.stop),
        closing(gateway.access_log.aclose),  # flushed to the stream before analytics stops
        running(permissions.start, permissions.stop),
        lambda: sdk_worker(settings, redis, permission_hook(permissions.gate)),
    )
    # Each part's routes in its own closed mount: anonymous callers are refused there unless a
    # route is public(...) (the probes, the permissions page).
    routes: list[BaseRoute] = [ClosedMount("/logs", analytics.routes()), ClosedMount("/sdk", sdk.routes()),
              ClosedMount("/permissions", permissions.routes())]
    # The web console (/admin) and the member page (/me) with the admin API behind them: each
    # checks its own sign-in (the admin token or a member's key), so they are no closed mount.
    routes += web_routes(settings, tokens, keys)
    return create_app(gateway, extra_routes=routes, lifespan=parts)
