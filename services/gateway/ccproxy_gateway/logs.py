"""Who may read which requests in the log API, as the gateway's client authentication says.

With client auth off everyone is the local admin; the holder of ``SECURITY__AUTH_TOKEN`` is the
admin and sees every key's requests; a member's key sees only its own. ``ccproxy serve`` mounts
the log API in the gateway and asks :func:`log_viewer`; in the stack Traefik routes ``/logs``
to the analytics service, which checks keys the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request

from ccproxy_core.client_keys import current_principal
from ccproxy_core.identity import ADMIN_IDENTITY, LOCAL_IDENTITY, ClientIdentity
from ccproxy_gateway.client_auth import ClientAuth

Viewer = Callable[[Request], Awaitable[ClientIdentity]]


def log_viewer(client_auth: ClientAuth) -> Viewer:
    async def viewer(request: Request) -> ClientIdentity:
        client_auth.check(request)  # 401 without a valid key
        if not client_auth.enabled:
            return LOCAL_IDENTITY
        principal = current_principal.get()
        if principal is None or principal.key_id == ADMIN_IDENTITY.id:
            return ADMIN_IDENTITY
        return ClientIdentity(id=principal.key_id, name=principal.key_name, admin=False)

    return viewer
