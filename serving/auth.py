"""API keys as bearer tokens: 401 without valid credentials, 403 without the needed scope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastapi import HTTPException, Request

SCOPES = ("score", "admin")


@dataclass(frozen=True)
class Principal:
    client: str
    scope: str
    key_id: str | None


DEVELOPMENT = Principal(client="development (auth off)", scope="admin", key_id=None)


def require(scope: str) -> Callable[[Request], Principal]:
    """A dependency that admits a key with `scope` (admin keys may also score)."""

    def dependency(request: Request) -> Principal:
        settings = request.app.state.settings
        if settings.auth == "off":
            return DEVELOPMENT
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        record = request.app.state.store.verify(token.strip())
        if record is None:
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        if not record.allows(scope):
            raise HTTPException(403, f"this key lacks the '{scope}' scope")
        return Principal(client=record.client, scope=record.scope, key_id=record.key_id)

    return dependency
