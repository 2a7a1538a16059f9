"""Hands out a usable upstream credential, refreshing it single-flight: refresh tokens rotate and each works once,
so an asyncio lock, a Redis lock across replicas, and a re-read of the store once it is taken (someone may have
refreshed). A failed refresh is shared by its waiters and not retried with the same token for 30 s doubling to
30 min (no hammering the endpoint); a new login is tried at once, a still-valid access token used meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from ccproxy_auth import oauth
from ccproxy_auth.accounts import ClaudeOAuth, CredentialsError, CredentialStore, cli_stores
from ccproxy_core.errors import ProxyError
from ccproxy_core.logging import register_secret
from ccproxy_core.redis import UNAVAILABLE, RedisLock, unavailable_as_503
from ccproxy_core.settings import Settings
from ccproxy_core.tokens import DEFAULT_ACCOUNT, Credential, CredentialStatus

log = logging.getLogger(__name__)

#: Seconds the cross-replica refresh lock lives: longer than a refresh can take (the token
#: endpoint's timeout is 30 s), short enough that a crashed holder frees it soon.
LOCK_TTL = 40.0

#: Seconds without a new attempt after a failed refresh; doubles with each failure, up to the max.
REFRESH_BACKOFF_SECONDS = 30.0
REFRESH_BACKOFF_MAX_SECONDS = 1800.0


@dataclass(slots=True)
class RefreshFailure:
    refresh_token: str
    error: ProxyError
    retry_at: float
    delay: float

    def blocks(self, refresh_token: str | None) -> bool:
        return refresh_token == self.refresh_token and time.monotonic() < self.retry_at


NO_CREDENTIALS = ("No Claude credentials found. Log in with the Claude CLI (`claude`, then /login), "
                  "or set AUTH__API_KEY to use an Anthropic API key.")


class CredentialManager:
    """The token source of one account: an API key, or a login in one of ``stores`` (None: the
    Claude CLI's login, or ``AUTH__API_KEY``)."""

    def __init__(
        self, settings: Settings, redis: Any, account: str = DEFAULT_ACCOUNT,
        stores: list[CredentialStore] | None = None, api_key: str | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self.account = account
        self._lock = asyncio.Lock()
        self._cached: ClaudeOAuth | None = None
        self._issued: tuple[ClaudeOAuth, Credential] | None = None
        self._store: CredentialStore | None = None
        #: Told each refresh's outcome ("ok" or "failed"): the pool counts them in its metrics.
        self.on_refresh: Callable[[str], None] = lambda outcome: None
        self._failure: RefreshFailure | None = None
        if stores is None:
            stores = cli_stores(settings)
            api_key = settings.auth.api_key.get_secret_value() if settings.auth.api_key else None
        self.stores = stores
        self._api_key = api_key
        register_secret(self._api_key)
        #: Where its credential comes from; the pool keeps the manager while this stays the same.
        self.origin = (api_key, tuple(store.name for store in stores))

    def _load(self) -> ClaudeOAuth | None:
        """Read the credentials again from wherever they are (the CLI may have changed them)."""
        for store in self.stores:
            found = store.load()
            if found is not None:
                self._store = store
                register_secret(found.access_token)
                register_secret(found.refresh_token)
                self._cached = found
                return found
        self._cached = None
        return None

    async def get(self, *, rejected: str | None = None) -> Credential:
        if self._api_key:
            return Credential(kind="api_key", secret=SecretStr(self._api_key), account=self.account)
        current = self._cached
        if current is None:
            current = await asyncio.to_thread(self._load_or_fail)
        if self._usable(current, rejected):
            return self._credential(current)
        if self._failure is not None and self._failure.blocks(current.refresh_token):
            current = await asyncio.to_thread(self._load_or_fail)  # a new login since?
            if self._backing_off(current, rejected):
                return self._credential(current)
        async with self._single_flight():
            # Fencing: the token may have been refreshed while we waited for the lock.
            current = await asyncio.to_thread(self._load_or_fail)
            # Callers that waited for a refresh that failed share its failure (_backing_off raises it).
            if self._usable(current, rejected) or self._backing_off(current, rejected):
                return self._credential(current)
            try:
                return self._credential(await self._refresh(current))
            except ProxyError:
                # A holder that outlived its lock may have rotated the pair meanwhile, or this refresh was
                # ahead of expiry: while a token still works, the failure is not fatal yet.
                latest = await asyncio.to_thread(self._load_or_fail)
                if self._usable(latest, rejected, margin=0):
                    return self._credential(latest)
                raise

    async def status(self) -> CredentialStatus:
        if self._api_key:
            return CredentialStatus(available=True, kind="api_key", source="settings", account=self.account)
        try:
            found = await asyncio.to_thread(self._load)
        except CredentialsError as exc:
            return CredentialStatus(available=False, detail=str(exc), account=self.account)
        if found is None:
            return CredentialStatus(available=False, detail=NO_CREDENTIALS, account=self.account)
        expires = found.expires_at / 1000 if found.expires_at else None
        valid = expires is None or expires > time.time()
        detail = None
        if not valid and not found.refresh_token:
            detail = "access token expired and no refresh token"
        failure = self._failure
        if not valid and failure is not None and failure.refresh_token == found.refresh_token:
            detail = f"access token expired and its refresh failed: {failure.error.message}"
        source = self._store.name if self._store else None
        return CredentialStatus(available=detail is None, kind="oauth", source=source, account=self.account,
                                expires_at=expires, subscription_type=found.subscription_type, detail=detail)

    def _load_or_fail(self) -> ClaudeOAuth:
        try:
            found = self._load()
        except CredentialsError as exc:
            raise ProxyError(401, f"Claude credentials unusable: {exc}", "authentication_error") from exc
        if found is None:
            raise ProxyError(401, NO_CREDENTIALS, "authentication_error")
        return found

    def _usable(self, oauth_: ClaudeOAuth, rejected: str | None, margin: float | None = None) -> bool:
        """Not refused by the upstream, and not expiring within ``margin`` (default: the refresh margin)."""
        if margin is None:
            margin = self._settings.oauth.refresh_margin_seconds
        if rejected is not None and oauth_.access_token == rejected:
            return False
        return oauth_.expires_at is None or oauth_.expires_at / 1000 - time.time() > margin

    def _backing_off(self, current: ClaudeOAuth, rejected: str | None) -> bool:
        """While the backoff of a failed refresh lasts for this very refresh token: True if the
        access token still works (use it, do not refresh), else raise that failure again."""
        failure = self._failure
        if failure is None or not failure.blocks(current.refresh_token):
            return False
        if self._usable(current, rejected, margin=0):
            return True
        raise failure.error

    def _credential(self, oauth_: ClaudeOAuth) -> Credential:
        # Built once per token, not per request (a pydantic model costs a few µs to validate).
        # Callers that change it use model_copy, so sharing one instance is safe.
        cached = self._issued
        if cached is not None and cached[0] is oauth_:
            return cached[1]
        expires = oauth_.expires_at / 1000 if oauth_.expires_at else None
        credential = Credential(kind="oauth", secret=SecretStr(oauth_.access_token), expires_at=expires,
                                account=self.account)
        self._issued = (oauth_, credential)
        return credential

    async def _refresh(self, current: ClaudeOAuth) -> ClaudeOAuth:
        if not current.refresh_token:
            raise ProxyError(401, "Claude access token expired and there is no refresh token; log in again.",
                             "authentication_error")
        try:
            answer = await oauth.refresh(self._settings.oauth, current.refresh_token)
        except oauth.OAuthError as exc:
            self.on_refresh("failed")
            raise self._failed(current.refresh_token, exc) from exc
        self._failure = None
        self.on_refresh("ok")
        register_secret(answer.access_token)
        register_secret(answer.refresh_token)
        rotated = {"access_token": answer.access_token, "refresh_token": answer.refresh_token or current.refresh_token,
                   "expires_at": answer.expires_at_ms()}
        updated = current.model_copy(update=rotated)
        if self._store is not None:
            await asyncio.to_thread(self._store.save, updated)
        self._cached = updated
        with contextlib.suppress(*UNAVAILABLE):  # when, for the console (the pool reads it as refreshed_at)
            key = f"{self._settings.redis.key_prefix}pool:acct:{self.account}:refreshed"
            await self._redis.set(key, repr(time.time()))
        log.info("refreshed the access token of account %s", self.account)
        return updated

    def _failed(self, refresh_token: str, exc: oauth.OAuthError) -> ProxyError:
        """Remember a failed refresh (backoff) and say what the client should know."""
        previous = self._failure
        delay = REFRESH_BACKOFF_SECONDS
        if previous is not None and previous.refresh_token == refresh_token:
            delay = min(previous.delay * 2, REFRESH_BACKOFF_MAX_SECONDS)
        error = ProxyError(503, f"Claude token refresh failed ({exc}); retry later.",
                           headers={"retry-after": str(int(delay))})
        if exc.refused:
            error = ProxyError(401, f"Claude token refresh failed ({exc}); log in again with `claude` or "
                               "`ccproxy auth login`.", "authentication_error")
        self._failure = RefreshFailure(refresh_token, error, time.monotonic() + delay, delay)
        log.warning("token refresh for account %s failed: %s; next attempt in %.0f s unless the login changes",
                    self.account, exc, delay)
        return error

    @contextlib.asynccontextmanager
    async def _single_flight(self) -> AsyncIterator[None]:
        async with self._lock:
            lock = RedisLock(self._redis, f"{self._settings.redis.key_prefix}lock:refresh:{self.account}", ttl=LOCK_TTL)
            async with unavailable_as_503("the token refresh"):
                acquired = await lock.acquire(wait=LOCK_TTL + 5)
            if not acquired:
                raise ProxyError(503, "timed out waiting for another replica's token refresh",
                                 headers={"retry-after": "5"})
            try:
                yield
            finally:
                with contextlib.suppress(*UNAVAILABLE):
                    await lock.release()
