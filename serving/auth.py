"""API keys as bearer tokens: 401 without valid credentials, 403 without the needed scope."""

from dataclasses import dataclass
from typing import Awaitable, Callable

import logging

from fastapi import HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from starlette.concurrency import run_in_threadpool

from serving.deps import log_throttle_of, settings_of, store_of
from serving.scopes import Scope
from serving.store import CACHE_MISS

log = logging.getLogger("icans_risk.serving")



@dataclass(frozen=True)
class Principal:
    client: str
    scope: str
    key_id: str | None


DEVELOPMENT = Principal(client="development (auth off)", scope="admin", key_id=None)


API_KEY_SCHEME = HTTPBearerModel(
    description=(
        "An API key, sent as `Authorization: Bearer <key>` (created with "
        "`icans-risk keys create --client NAME --scope score|admin`). Scoring needs the `score` "
        "scope, /v1/admin/* the `admin` scope (an admin key may also score). With ICANS_AUTH=off "
        "(development) no key is checked."
    )
)


class ApiKey(SecurityBase):
    """The dependency that admits a key with `scope` (admin keys may also score).

    A FastAPI security scheme, so that the OpenAPI document declares the bearer key on every
    operation that depends on it (Swagger UI's Authorize button), at no cost per request.
    Async, so that a request whose key is in the cache is admitted on the event loop without a
    threadpool hop; only a cache miss asks the database, in the threadpool. It reads the app's
    settings and store through serving.deps' accessors rather than sub-dependencies: every
    authenticated request runs it, and each FastAPI dependency costs ~15 us to resolve.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.model = API_KEY_SCHEME
        self.scheme_name = "apiKey"

    async def __call__(self, request: Request) -> Principal:
        scope = self.scope
        settings = settings_of(request.app)
        if settings.auth == "off":
            return DEVELOPMENT
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        store = store_of(request.app)
        token = token.strip()
        try:
            cached = store.verify_cached(token)
            record = await run_in_threadpool(store.verify, token) if cached is CACHE_MISS else cached
        except Exception as exc:  # the key store is down: a server-side condition, not the caller's
            kind = type(exc).__name__
            log_throttle_of(request.app)(log, logging.ERROR, ("keys", kind), "API key store unavailable: %s", kind)
            raise HTTPException(503, "the key store is unavailable", headers={"Retry-After": "5"}) from None
        if record is None:
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        if not record.allows(scope):
            raise HTTPException(403, f"this key lacks the '{scope}' scope")
        return Principal(client=record.client, scope=record.scope, key_id=record.key_id)


def require(scope: Scope) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits a key with `scope` (admin keys may also score)."""
    return ApiKey(scope)
