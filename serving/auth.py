"""API keys as bearer tokens: 401 without valid credentials, 403 without the needed scope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

import logging

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from serving.store import CACHE_MISS

log = logging.getLogger("icans_risk.serving")



@dataclass(frozen=True)
class Principal:
    client: str
    scope: str
    key_id: str | None


DEVELOPMENT = Principal(client="development (auth off)", scope="admin", key_id=None)


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits a key with `scope` (admin keys may also score).

    Async, so that a request whose key is in the cache is admitted on the event loop without a
    threadpool hop; only a cache miss asks the database, in the threadpool.
    """

    async def dependency(request: Request) -> Principal:
        settings = request.app.state.settings
        if settings.auth == "off":
            return DEVELOPMENT
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        store = request.app.state.store
        token = token.strip()
        try:
            record = store.verify_cached(token)
            if record is CACHE_MISS:
                record = await run_in_threadpool(store.verify, token)
        except Exception as exc:  # the key store is down: a server-side condition, not the caller's
            kind = type(exc).__name__
            request.app.state.log_throttle(log, logging.ERROR, ("keys", kind), "API key store unavailable: %s", kind)
            raise HTTPException(503, "the key store is unavailable", headers={"Retry-After": "5"}) from None
        if record is None:
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        if not record.allows(scope):
            raise HTTPException(403, f"this key lacks the '{scope}' scope")
        return Principal(client=record.client, scope=record.scope, key_id=record.key_id)

    return dependency
