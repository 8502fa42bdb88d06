"""CDS Hooks client authentication: a signed JWT from the EHR on every call (CDS Hooks 2.0).

`Authorization: Bearer <JWT>`; the token is accepted only if all of these hold:

- `alg` is one of `ICANS_CDS_JWT_ALGORITHMS` (asymmetric only: `none` and HMAC are never accepted,
  whatever the setting says); `typ`, if present, is `JWT`;
- `iss` is a configured issuer (`ICANS_CDS_ISSUERS`: issuer -> PEM public key, or a PEM or JWKS
  file) and the signature verifies with its key (chosen by `kid` in a JWKS); a `jku` header is
  never fetched: keys are exchanged out of band;
- `aud` equals the URL of the endpoint being called (`ICANS_CDS_SERVICE_URL` + path);
- `exp`, `iat` and `jti` are present; not expired (leeway `ICANS_CDS_JWT_LEEWAY_S`), not issued
  in the future, not valid for longer than `ICANS_CDS_JTI_TTL_S` and not issued longer ago;
- `jti` was never seen before from that issuer (replay cache in the service store, shared by all
  workers, kept until the token expires).

Every failure is a 401 that names the rule (never the token). `ICANS_AUTH=off` turns this off
together with the API keys of the plain API (development only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from fastapi import HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from serving.auth import DEVELOPMENT, Principal
from serving.deps import log_throttle_of, settings_of, store_of

log = logging.getLogger("icans_risk.serving")

_RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_EC_ALGS = {"secp256r1": {"ES256"}, "secp384r1": {"ES384"}, "secp521r1": {"ES512"}}
_MAX_TOKEN = 16_384


class CdsAuthError(Exception):
    """Why a token was refused (a short rule, safe to return to the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayCacheUnavailable(Exception):
    """The replay cache (the service store) could not be written: 503, as for the audit trail."""


# A tenant claim reaches the audit trail's client id: printable, short, no separators or escapes.
_TENANT = re.compile(r"[A-Za-z0-9._~:/@+-]{1,64}")


@dataclass(frozen=True)
class _Key:
    kid: str | None
    key: Any
    algorithms: frozenset[str]


def _algorithms_for(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset(_RSA_ALGS)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset(_EC_ALGS.get(key.curve.name, set()))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA"})
    raise ValueError(f"unsupported public key type {type(key).__name__} (use RSA, EC or Ed25519)")


def _pem_key(text: str) -> _Key:
    data = text.encode()
    key: PublicKeyTypes
    if b"BEGIN CERTIFICATE" in data:
        key = x509.load_pem_x509_certificate(data).public_key()
    elif b"PRIVATE KEY" in data:
        raise ValueError("a private key was configured as an issuer key; configure the public key")
    else:
        key = serialization.load_pem_public_key(data)
    return _Key(None, key, _algorithms_for(key))


def _jwks_keys(text: str) -> list[_Key]:
    obj = json.loads(text)
    keys = obj.get("keys") if isinstance(obj, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError("a JWKS must be an object with a non-empty 'keys' array")
    out = []
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("use") == "enc":
            continue
        if "d" in jwk or jwk.get("kty") == "oct":
            raise ValueError("a JWKS of an issuer must hold public keys only (no 'd', no symmetric keys)")
        key = jwt.PyJWK(jwk).key
        out.append(_Key(jwk.get("kid"), key, _algorithms_for(key)))
    if not out:
        raise ValueError("the JWKS holds no signature keys")
    return out


def load_keys(source: str) -> list[_Key]:
    """Keys of one issuer: inline PEM, inline JWKS JSON, or the path of a PEM or JWKS file."""
    text = source.strip()
    if not text.startswith("-----BEGIN") and not text.startswith("{"):
        text = Path(text).expanduser().read_text(encoding="utf-8").strip()
    if text.startswith("{"):
        return _jwks_keys(text)
    return [_pem_key(text)]


class CdsAuthenticator:
    """Verifies CDS client JWTs against the configured issuers; keys files are re-read when they change."""

    def __init__(
        self,
        issuers: dict[str, str],
        *,
        algorithms: list[str],
        leeway_s: float,
        jti_ttl_s: float,
        claim_jti: Callable[[str, datetime], bool],
    ) -> None:
        self.issuers = dict(issuers)
        self.algorithms = {a for a in algorithms if a != "none" and not a.upper().startswith("HS")}
        self.leeway_s = leeway_s
        self.jti_ttl_s = jti_ttl_s
        self.claim_jti = claim_jti
        self._keys: dict[str, tuple[float | None, list[_Key]]] = {}
        self._lock = threading.Lock()

    def _issuer_keys(self, iss: str) -> list[_Key]:
        source = self.issuers[iss]
        path = None if source.strip().startswith(("-----BEGIN", "{")) else Path(source).expanduser()
        mtime = os.stat(path).st_mtime if path is not None else None
        with self._lock:
            cached = self._keys.get(iss)
            if cached is not None and cached[0] == mtime:
                return cached[1]
        keys = load_keys(source)
        with self._lock:
            self._keys[iss] = (mtime, keys)
        return keys

    def verify(self, token: str, audiences: list[str]) -> dict[str, Any]:
        if not token or len(token) > _MAX_TOKEN:
            raise CdsAuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise CdsAuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise CdsAuthError("signing algorithm not accepted")
        typ = header.get("typ")
        if typ is not None and str(typ).upper() != "JWT":
            raise CdsAuthError("typ must be JWT")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self.issuers:
            raise CdsAuthError("unknown issuer")
        try:
            keys = self._issuer_keys(iss)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            log.error("CDS issuer %s: keys cannot be loaded: %s", iss, exc)
            raise CdsAuthError("the issuer's keys cannot be loaded") from None
        kid = header.get("kid")
        candidates = [k for k in keys if alg in k.algorithms and (kid is None or k.kid in (None, kid))]
        if kid is not None and any(k.kid == kid for k in candidates):
            candidates = [k for k in candidates if k.kid == kid]
        if not candidates:
            raise CdsAuthError("no key of the issuer matches kid/alg")
        claims = None
        for k in candidates:
            try:
                claims = jwt.decode(
                    token,
                    k.key,
                    algorithms=[alg],
                    audience=audiences,
                    issuer=iss,
                    leeway=self.leeway_s,
                    options={"require": ["iss", "aud", "exp", "iat", "jti"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise CdsAuthError("token expired") from None
            except jwt.InvalidAudienceError:
                raise CdsAuthError("aud is not this endpoint's URL") from None
            except jwt.MissingRequiredClaimError as exc:
                raise CdsAuthError(f"claim '{exc.claim}' is required") from None
            except jwt.ImmatureSignatureError:
                raise CdsAuthError("token issued in the future") from None
            except jwt.PyJWTError as exc:
                raise CdsAuthError(f"invalid token ({type(exc).__name__})") from None
        if claims is None:
            raise CdsAuthError("signature does not verify")
        now = time.time()
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            raise CdsAuthError("jti must be a non-empty string")
        if float(exp) - now > self.jti_ttl_s + self.leeway_s:
            raise CdsAuthError("token lifetime too long")
        if now - float(iat) > self.jti_ttl_s + self.leeway_s:
            raise CdsAuthError("token issued too long ago")
        digest = hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()
        expires = datetime.fromtimestamp(float(exp) + self.leeway_s, UTC)
        try:
            fresh = self.claim_jti(digest, expires)
        except Exception as exc:  # the store is locked or down: no answer is given without the replay check
            raise ReplayCacheUnavailable(type(exc).__name__) from None
        if not fresh:
            raise CdsAuthError("token replayed (jti already used)")
        return claims


_init_lock = threading.Lock()


def authenticator(app: Any) -> CdsAuthenticator:
    """The app's authenticator, created on first use from its settings and store."""
    auth = getattr(app.state, "cds_auth", None)
    if auth is None:
        with _init_lock:
            auth = getattr(app.state, "cds_auth", None)
            if auth is None:
                s = settings_of(app)
                auth = CdsAuthenticator(
                    s.cds_issuers,
                    algorithms=s.cds_jwt_algorithms,
                    leeway_s=s.cds_jwt_leeway_s,
                    jti_ttl_s=s.cds_jti_ttl_s,
                    claim_jti=lambda key, expires: store_of(app).claim_jti(key, expires),
                )
                app.state.cds_auth = auth
    return auth


def endpoint_url(settings: Any, path: str) -> str:
    return settings.cds_service_url.rstrip("/") + path


CDS_CLIENT_SCHEME = HTTPBearerModel(
    bearerFormat="JWT",
    description="A CDS Hooks client's signed JWT; its `aud` is the URL of the endpoint called.",
)


class CdsClient(SecurityBase):
    """A dependency admitting a CDS client whose JWT `aud` is the URL of one of `paths`.

    A FastAPI security scheme, so that the OpenAPI document declares it on the CDS operations."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths
        self.model = CDS_CLIENT_SCHEME
        self.scheme_name = "cdsClientJwt"

    def __call__(self, request: Request) -> Principal:
        settings = settings_of(request.app)
        if settings.auth == "off":
            return DEVELOPMENT
        if not settings.cds_service_url:
            raise HTTPException(503, "CDS Hooks client authentication is not configured (ICANS_CDS_SERVICE_URL)")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token (a CDS client JWT)", headers={"WWW-Authenticate": "Bearer"})
        audiences = [endpoint_url(settings, p) for p in self.paths]
        try:
            claims = authenticator(request.app).verify(token.strip(), audiences)
        except CdsAuthError as exc:
            raise HTTPException(401, f"invalid CDS client token: {exc.reason}", headers=challenge) from None
        except ReplayCacheUnavailable as exc:
            log_throttle_of(request.app)(
                log, logging.ERROR, ("cds_jti", str(exc)),
                "CDS replay cache unavailable (request %s): %s", request.state.request_id, exc,
            )
            raise HTTPException(
                503, "the service store is unavailable (token replay check); try again", headers={"Retry-After": "1"}
            ) from None
        client = f"cds:{claims['iss']}"
        tenant = claims.get("tenant")
        if tenant is not None:
            if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
                raise HTTPException(
                    401, "invalid CDS client token: the tenant claim must be 1-64 characters of "
                    "letters, digits and . _ ~ : / @ + -", headers=challenge,
                )
            client += f" tenant:{tenant}"
        return Principal(client=client[:200], scope="score", key_id=None)


# this module's annotations are strings, and FastAPI resolves an instance's through no module
CdsClient.__call__.__annotations__["request"] = Request


def require_cds_client(path: str, *also: str) -> Callable[[Request], Principal]:
    """A dependency admitting a CDS client whose JWT `aud` is the URL of `path` (or of one of `also`)."""
    return CdsClient((path, *also))
