"""Fetching the prefetch keys the CDS client did not satisfy, from the client's FHIR server.

Only when the request carries `fhirServer` and `fhirAuthorization` and the server's base URL lies
under an entry of `ICANS_CDS_FHIR_SERVER_ALLOWLIST` (empty by default: never fetch), over HTTPS
outside development. The EHR's access token goes to that server and nowhere else (issue 25):

- every URL requested (the first, each query, each `next` page) is normalised and checked against
  the allow-list: the origin (scheme, host, port) must be an entry's and the path must lie under
  the entry's path. A URL with dot segments (`.`/`..`, also percent-encoded), an encoded `/` or
  `\\`, user info, or a non-ASCII or control character is refused, not resolved: what the server
  would make of it is not ours to guess;
- redirects are never followed (a 3xx fails the key): a redirect could lead anywhere, token and all;
- one call (all keys, all pages) has one deadline (`ICANS_CDS_FETCH_DEADLINE_S`), a cap on the bytes
  read (`ICANS_CDS_FETCH_MAX_BYTES`), on the requests made and on the resources kept; each read
  waits at most the per-read timeout or what is left of the deadline, and `Budget.abort()` (called
  by the route when the deadline passes) closes the socket under a stalled read.

Any failure leaves the key unsatisfied (and the answer is 412 if required data stay missing); the
reasons logged name the key and the kind of failure, never a URL, token or patient value.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

log = logging.getLogger("icans_risk.serving")

MAX_BYTES = 5_000_000  # one response
MAX_PAGES = 10  # one key
_READ = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BAD_CHARS = re.compile(r"[^\x21-\x7e]")  # controls, space, non-ASCII: a URL as sent is printable ASCII
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)


class FetchError(RuntimeError):
    """A key could not be fetched; the message is a short reason without URLs or values."""


class Url(NamedTuple):
    """A normalised http(s) URL: lower-case scheme and host, explicit port, path without dot segments."""

    scheme: str
    host: str
    port: int
    path: str
    query: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def target(self) -> str:
        """The request target (path and query) as sent."""
        return self.path + (f"?{self.query}" if self.query else "")

    def under(self, base: "Url") -> bool:
        """Same origin, and the path is `base`'s path or lies below it (on a segment boundary)."""
        if self.origin != base.origin:
            return False
        prefix = base.path.rstrip("/")
        return self.path == prefix or self.path.startswith(prefix + "/")


def normalise(url: str) -> Url | None:
    """The URL normalised, or None if it is not one this service may request (see the module doc)."""
    if not isinstance(url, str) or not url or len(url) > 8192 or _BAD_CHARS.search(url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    path = parts.path or "/"
    if not path.startswith("/") or _ENCODED_SEPARATOR.search(path):
        return None
    text = path
    for _ in range(3):  # decoded once, twice, three times: no spelling of a dot segment gets through
        segments = text.split("/")
        if any(s in (".", "..") for s in segments) or "\\" in text:
            return None
        decoded = urllib.parse.unquote(text)
        if decoded == text:
            break
        text = decoded
    else:
        return None  # encoded more than three times over: not a URL a FHIR server hands out
    return Url(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], path, parts.query)


def allowed_base(fhir_server: str, allowlist: list[str], *, development: bool) -> Url | None:
    """The normalised `fhirServer` if it lies under an allow-list entry (http only in development)."""
    url = normalise(fhir_server)
    if url is None or (url.scheme == "http" and not development):
        return None
    for entry in allowlist:
        base = normalise(entry)
        if base is not None and url.under(base):
            return url
    return None


def allowed(fhir_server: str, allowlist: list[str], *, development: bool) -> bool:
    return allowed_base(fhir_server, allowlist, development=development) is not None


def render(template: str, patient_id: str) -> str:
    return template.replace("{{context.patientId}}", urllib.parse.quote(patient_id, safe=""))


@dataclass
class Budget:
    """What one hook call may spend on fetching: time, bytes, requests, resources kept."""

    deadline_s: float
    read_timeout_s: float
    max_bytes: int
    max_requests: int
    max_entries: int
    started: float = field(default_factory=time.monotonic)
    used_bytes: int = 0
    requests: int = 0
    entries: int = 0
    aborted: threading.Event = field(default_factory=threading.Event)
    _sock: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Any) -> "Budget":
        return cls(
            deadline_s=settings.cds_fetch_deadline_s,
            read_timeout_s=settings.cds_fetch_timeout_s,
            max_bytes=settings.cds_fetch_max_bytes,
            max_requests=settings.cds_fetch_max_requests,
            max_entries=settings.cds_fetch_max_entries,
        )

    def remaining(self) -> float:
        return 0.0 if self.aborted.is_set() else self.deadline_s - (time.monotonic() - self.started)

    def timeout(self) -> float:
        left = self.remaining()
        if left <= 0:
            raise FetchError("the call's fetch deadline passed")
        return min(self.read_timeout_s, left)

    def abort(self) -> None:
        """Stop now: the read under way (another thread's) fails at once, later ones are not made."""
        self.aborted.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _using(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
        if sock is not None and self.aborted.is_set():
            self.abort()


def _get(url: Url, token: str, budget: Budget) -> dict[str, Any]:
    budget.requests += 1
    if budget.requests > budget.max_requests:
        raise FetchError(f"more than {budget.max_requests} requests in one call")
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.host, url.port, timeout=budget.timeout())
    try:
        conn.connect()
        sock = conn.sock
        budget._using(sock)
        sock.settimeout(budget.timeout())
        conn.request(
            "GET",
            url.target(),
            headers={
                "Accept": "application/fhir+json",
                "Accept-Encoding": "identity",
                "Authorization": f"Bearer {token}",
            },
        )
        resp = conn.getresponse()
        if 300 <= resp.status < 400:
            raise FetchError(f"the FHIR server answered a redirect ({resp.status}); redirects are not followed")
        if resp.status != 200:
            raise FetchError(f"the FHIR server answered HTTP {resp.status}")
        chunks: list[bytes] = []
        size = 0
        while True:
            sock.settimeout(budget.timeout())
            chunk = resp.read1(_READ)
            if not chunk:
                break
            size += len(chunk)
            budget.used_bytes += len(chunk)
            if size > MAX_BYTES:
                raise FetchError("response too large")
            if budget.used_bytes > budget.max_bytes:
                raise FetchError(f"more than {budget.max_bytes} bytes fetched in one call")
            chunks.append(chunk)
        if budget.aborted.is_set():  # the socket was shut down under the read: an end, not the body's
            raise FetchError("the call's fetch deadline passed")
    except FetchError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, reset, timed out, bad status line
        if budget.aborted.is_set() or budget.remaining() <= 0:
            raise FetchError("the call's fetch deadline passed") from None
        raise FetchError(type(exc).__name__) from None
    finally:
        budget._using(None)
        conn.close()
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise FetchError("response is not JSON") from None
    if not isinstance(data, dict):
        raise FetchError("response is not a FHIR resource")
    return data


def fetch(base: Url, relative: str, token: str, budget: Budget) -> dict[str, Any] | None:
    """The resource or searchset Bundle for `relative` (None for an empty search, as prefetch would send)."""
    first = normalise(base.scheme + "://" + _netloc(base) + base.path.rstrip("/") + "/" + relative)
    if first is None or not first.under(base):
        raise FetchError("the query does not stay on the FHIR server")
    data = _get(first, token, budget)
    if data.get("resourceType") == "OperationOutcome":
        raise FetchError("the FHIR server answered with an OperationOutcome")
    if data.get("resourceType") != "Bundle":
        return data
    entries = _entries(data, budget)
    pages = 1
    next_url = _next(data)
    while next_url is not None and pages < MAX_PAGES:
        page_url = normalise(next_url)
        if page_url is None or not page_url.under(base):
            log.warning("FHIR fetch: a next link leaves the FHIR server; not followed")
            break
        page = _get(page_url, token, budget)
        if page.get("resourceType") != "Bundle":
            raise FetchError("a next page is not a Bundle")
        entries += _entries(page, budget)
        next_url = _next(page)
        pages += 1
    if not entries:
        return None
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def fetch_all(
    base: Url, queries: Mapping[str, str], token: str, budget: Budget
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each key's value, and for each key not fetched the reason; stops when the budget is spent."""
    from serving.fhir.prefetch import PrefetchError, resources_of

    data: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for key, relative in queries.items():
        try:
            budget.timeout()
            value = fetch(base, relative, token, budget)
            resources_of(key, value)  # invalid FHIR from the server fails the key, not the client's request
            data[key] = value
        except FetchError as exc:
            failed[key] = str(exc)
        except PrefetchError:
            failed[key] = "the FHIR server's answer is not valid FHIR"
    return data, failed


def _entries(bundle: dict[str, Any], budget: Budget) -> list[Any]:
    entries = bundle.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise FetchError("Bundle.entry is not a list")
    budget.entries += len(entries)
    if budget.entries > budget.max_entries:
        raise FetchError(f"more than {budget.max_entries} resources fetched in one call")
    return entries


def _next(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _netloc(url: Url) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}"
