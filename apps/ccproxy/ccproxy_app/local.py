"""``ccproxy serve``'s wiring, the one place that imports several services: each is built from the same
settings and handed what they share (the account pool, the gateway's metrics, one Redis), with
in-process implementations where the stack has HTTP ones."""

from __future__ import annotations

from starlette.applications import Starlette

from ccproxy_analytics.service import Analytics
from ccproxy_auth.admin import local_accounts, web_routes
from ccproxy_core.identity import ClosedMount
from ccproxy_core.lifespan import closing, lifespan, running
from ccproxy_core.redis import connect
from ccproxy_core.settings import Settings
from ccproxy_forwarder.forwarder import ApiForwarder
from ccproxy_gateway.app import Gateway, create_app
from ccproxy_gateway.sdk_routes import SdkRoutes
from ccproxy_permissions.broker import PermissionBroker
from ccproxy_permissions.service import routes as permission_routes
from ccproxy_sdk_worker.worker import Supervised


def build_local_app(settings: Settings) -> Starlette:
    """Gateway, api-forwarder, auth, sdk-worker, permissions and analytics in one app."""
    redis = connect(settings.redis)  # the embedded stand-in unless REDIS__URL
    # The account pool (named accounts, else the CLI login) and, with REDIS__URL, client keys.
    tokens, keys = local_accounts(settings, redis)
    forwarder = ApiForwarder(settings.anthropic, tokens)
    gateway = Gateway(settings, forwarder, tokens.status, keys=keys, redis=redis)
    tokens.attach_metrics(gateway.metrics)
    analytics = Analytics(settings, redis, metrics=gateway.metrics)
    sdk = SdkRoutes(gateway, redis)  # runs on the in-process worker below, through the same Redis
    permissions = PermissionBroker(settings, redis)  # the worker's prompts are answered in process
    parts = lifespan(
        closing(redis.aclose),
        closing(forwarder.aclose),
        running(analytics.start, analytics.stop),
        closing(gateway.access_log.aclose),  # flushed to the stream before analytics stops
        running(permissions.start, permissions.stop),
        lambda: Supervised(settings, redis, permissions).running(),
    )
    # The gateway's backend resolves the caller once; each closed mount refuses anonymous callers unless a
    # route is public(...). The console (/admin) and member page (/me) check their own sign-in.
    return create_app(gateway, lifespan=parts, extra_routes=[
        ClosedMount("/logs", analytics.routes()), ClosedMount("/sdk", sdk.routes()),
        ClosedMount("/permissions", permission_routes(permissions, internal=False)),
        *web_routes(settings, tokens, keys)])
