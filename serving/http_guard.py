"""Limits at the edge, enforced where the bytes arrive: uvicorn's httptools protocol, guarded.

uvicorn 0.54 bounds connections per worker (`limit_concurrency`, 503 beyond it) and idle
keep-alive connections (`timeout_keep_alive`), but its httptools protocol (the fast one, used by
default) has no limit on the size of a request's head, on the number of header fields, or on
the time a client may take to send them or the body: one connection could stream an endless
header into a worker's memory (and its parser's CPU) or hold a request open forever.
`h11_max_incomplete_event_size` bounds the head only for the slower pure-Python h11 protocol.
This subclass adds, per connection:

- request line (URL) longer than `max_request_line` bytes: 414, connection closed;
- request head (request line + header fields) over `max_head_bytes`, or more than `max_headers`
  fields: 431, closed. Bytes are counted before the parser sees them, so an endless header
  costs at most max_head_bytes plus one read;
- head not complete within `header_timeout_s` of the connection (or of the request's first
  byte): 408, closed; body not complete within `body_timeout_s` of the head: 408 (or the
  connection is closed if a response has started).

The limits come from the settings (ICANS_HTTP_*), read once per worker process.

Concurrency (issue 25): uvicorn's own `limit_concurrency` counts open connections, so 512 idle
connections that never sent a byte made every request, /healthz included, answer 503. Here the
limit counts requests in flight only (an idle connection costs a file descriptor until the header
timeout closes it, not a place in the limit), and the probes (/healthz, /readyz) are answered
whatever the count: a liveness probe that fails under load gets a busy replica killed. A request
refused by the limit gets 503 with Retry-After, and the log gets one line per interval, not one
per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


@dataclass(frozen=True)
class EdgeLimits:
    max_request_line: int = 8 * 1024
    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> "EdgeLimits":
        return cls(
            max_request_line=settings.http_max_request_line,
            max_head_bytes=settings.http_max_head_bytes,
            max_headers=settings.http_max_headers,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
        )


_limits: EdgeLimits | None = None


def limits() -> EdgeLimits:
    global _limits
    if _limits is None:
        from core.settings import get_settings

        _limits = EdgeLimits.from_settings(get_settings())
    return _limits


class _Refuse(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head-size, header-count and time limits (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits()
        # the limit is ours (requests in flight, probes exempt); uvicorn's counts idle connections
        self.in_flight_limit, self.limit_concurrency = self.limit_concurrency, None
        self._in_head = True
        self._head = 0
        self._url = 0
        self._fields = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused: tuple[int, str] | None = None
        self._running: Any = None  # the request cycle whose ASGI task runs now

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        # uvicorn marks only the last *parsed* request disconnected; with pipelining the one running
        # is an earlier one, which then writes to the closed transport (uvloop: RuntimeError, two
        # tracebacks per connection). Mark the running one and drop the queued ones (issue 25).
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        for cycle, _ in self.pipeline:
            cycle.disconnected = True
        self.pipeline.clear()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        if self._refused is not None or self.parser is None:
            return
        if self._in_head:
            room = self.limits.max_head_bytes - self._head
            if len(data) > room:
                # feed what may still belong to the head; if it ends there, feed the rest
                first, data = data[: max(room, 0)], data[max(room, 0):]
                self._head += len(first)
                if first:
                    self._feed(first)
                if self._refused is not None or self.transport.is_closing():
                    return
                if self._in_head:
                    self._refuse(431, "Request header fields too large")
                    return
            else:
                self._head += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """uvicorn's data_received, with the refusals above answered by their own status and
        without a log line per bad request (an attacker's requests must not flood the log)."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._reply(*(self._refused or (400, "Invalid HTTP request received.")))

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # a request after a keep-alive pause: its head has a deadline too
            self._arm(self.limits.header_timeout_s, self._head_expired)

    def on_url(self, url: bytes) -> None:
        self._url += len(url)
        if self._url > self.limits.max_request_line:
            self._refused = (414, "URI too long")
            raise _Refuse()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_headers:
            self._refused = (431, "Too many header fields")
            raise _Refuse()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout_s, self._body_expired)
        limit = self.in_flight_limit
        if limit is None or len(self.tasks) < limit or self._probe():
            super().on_headers_complete()
            return
        app, self.app = self.app, _over_limit  # uvicorn takes the app to run from self.app here
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _probe(self) -> bool:
        try:
            path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False
        return path in PROBES

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head, self._url, self._fields = True, 0, 0, 0
        super().on_message_complete()

    # -- refusals -----------------------------------------------------------------------------

    def _refuse(self, status: int, msg: str) -> None:
        self._refused = (status, msg)
        self._reply(status, msg)

    def _reply(self, status: int, msg: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = msg.encode("ascii")
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()

    def _head_expired(self) -> None:
        self._timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "Request header timeout")

    def _body_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, "Request body timeout")
        else:
            self.transport.close()

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


PROBES = frozenset({b"/healthz", b"/readyz"})
_over_limit_logged = 0.0


async def _over_limit(scope: Any, receive: Any, send: Any) -> None:
    """503 for a request over the in-flight limit; one log line per 10 s, however many there are."""
    global _over_limit_logged
    now = time.monotonic()
    if now - _over_limit_logged > 10.0:
        _over_limit_logged = now
        logging.getLogger("icans_risk.serving").warning(
            "requests over the in-flight limit (ICANS_HTTP_LIMIT_CONCURRENCY) are answered 503"
        )
    body = b"Service unavailable: too many requests in flight; retry shortly"
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


__all__ = ["EdgeLimits", "GuardedHttpToolsProtocol", "limits"]
