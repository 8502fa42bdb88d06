"""API keys: create, revoke, list and verify bearer tokens, with a short-lived lookup cache so that
the hot path rarely touches the database. Only a salted hash of each secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.scopes import SCOPES, Scope
from serving.store.tables import api_keys

TOKEN_PREFIX = "icr_"
_KEY_ID_BYTES = 8  # 16 hex characters: an identifier, not a secret
_SECRET_BYTES = 32  # token_urlsafe(32): 256 bits, 43 characters
_TOKEN = re.compile(r"icr_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TOKEN_LEN = len(TOKEN_PREFIX) + 2 * _KEY_ID_BYTES + 1 + 43
_CLIENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@ -]{0,199}")
_CACHE_MAX = 10_000


class _CacheMiss(Enum):
    """CACHE_MISS's type: a one-member enum, so that `x is CACHE_MISS` narrows x for the type checker."""

    CACHE_MISS = "the key is not in the cache"


CACHE_MISS: Final = _CacheMiss.CACHE_MISS  # Store.verify_cached: the key is not in the cache
CacheMiss = Literal[_CacheMiss.CACHE_MISS]
_Entry = tuple["KeyRecord", bytes, str]  # a key's record, salt and secret hash


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the service sees it: never the secret, never its hash."""

    key_id: str
    client: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, required: Scope) -> bool:
        """Admin implies every scope; a revoked key allows nothing."""
        if self.revoked:
            return False
        return self.scope == "admin" or required == self.scope


def _secret_hash(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).hexdigest()


def parse_token(token: object) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None; never raises."""
    if not isinstance(token, str) or len(token) != _TOKEN_LEN:
        return None
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


class ApiKeys:
    """The Store's API-key methods (a mixin: the engine and the cache are set up by StoreCore)."""

    engine: Engine
    key_cache_ttl_s: float
    _cache: dict[str, tuple[float, _Entry | None]]
    _cache_lock: threading.Lock

    def create_key(self, client: str, scope: Scope) -> tuple[KeyRecord, str]:
        """A new key for `client`; the token is returned once and only its salted hash is stored.

        The secret is 256 random bits, so a single HMAC-SHA256 with a per-key salt is enough:
        slow KDFs (bcrypt, scrypt, argon2) defend low-entropy passwords against guessing, which
        a random token is not, and they would cost milliseconds on every request.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if not isinstance(client, str) or not _CLIENT.fullmatch(client):
            raise ValueError(
                "client must be 1-200 characters: letters, digits and . _ : @ - or space, "
                "starting with a letter or digit"
            )
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        salt = secrets.token_bytes(16)
        record = KeyRecord(key_id=key_id, client=client, scope=scope, created_at=datetime.now(UTC))
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    client=client,
                    scope=scope,
                    salt=salt.hex(),
                    hash=_secret_hash(salt, secret),
                    created_at=record.created_at,
                    revoked_at=None,
                )
            )
        with self._cache_lock:
            self._cache.pop(key_id, None)
        return record, f"{TOKEN_PREFIX}{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke now (idempotent: an already revoked key keeps its first revocation time).

        This process stops accepting it at once; other processes within `key_cache_ttl_s`.
        Raises KeyError for an unknown key id.
        """
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(sa.select(*_KEY_COLUMNS).where(api_keys.c.key_id == key_id)).first()
        with self._cache_lock:
            self._cache.pop(key_id, None)
        if row is None:
            raise KeyError(key_id)
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first, revoked ones included (never a secret or a hash)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*_KEY_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.key_id)
            ).all()
        return [_key_record(r) for r in rows]

    def verify(self, token: object) -> KeyRecord | None:
        """The key behind a bearer token, or None (malformed, unknown, wrong secret or revoked).

        Malformed input never raises; a database failure does (the caller answers 503, not 401).
        Lookups are cached for `key_cache_ttl_s`, so the hot path rarely touches the database.
        """
        parsed = parse_token(token)
        if parsed is None:
            return None
        return self._check(self._lookup(parsed[0]), parsed[1])

    def verify_cached(self, token: object) -> KeyRecord | None | CacheMiss:
        """`verify` answered from the cache alone, or `CACHE_MISS` when the database must be asked
        (async callers then call `verify` off the event loop)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        entry = self._cached(parsed[0])
        return CACHE_MISS if entry is CACHE_MISS else self._check(entry, parsed[1])

    @staticmethod
    def _check(entry: _Entry | None, secret: str) -> KeyRecord | None:
        if entry is None:
            return None
        record, salt, expected = entry
        if not hmac.compare_digest(_secret_hash(salt, secret), expected):
            return None
        return None if record.revoked else record

    def _cached(self, key_id: str) -> _Entry | None | CacheMiss:
        if self.key_cache_ttl_s > 0:
            with self._cache_lock:
                hit = self._cache.get(key_id)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        return CACHE_MISS

    def _lookup(self, key_id: str) -> _Entry | None:
        now = time.monotonic()
        hit = self._cached(key_id)
        if hit is not CACHE_MISS:
            return hit
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*_KEY_COLUMNS, api_keys.c.salt, api_keys.c.hash).where(api_keys.c.key_id == key_id)
            ).first()
        entry = None if row is None else (_key_record(row), bytes.fromhex(row.salt), row.hash)
        if self.key_cache_ttl_s > 0:
            with self._cache_lock:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()  # bounded: random unknown key ids cannot grow it forever
                self._cache[key_id] = (now + self.key_cache_ttl_s, entry)
        return entry


_KEY_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.client,
    api_keys.c.scope,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        client=row.client,
        scope=row.scope,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
