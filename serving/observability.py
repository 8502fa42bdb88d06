"""Request ids, body-size limits and Prometheus metrics, as one pure ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware) so that the hot path pays for one wrapper, not a task per
request. Metrics are per process; with several workers, scrape each or aggregate upstream.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")


class Metrics:
    """One registry per app, so that tests and several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "icans_http_requests_total", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "icans_http_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "icans_model_info", "The model being served (value 1)", ["name", "version", "run_id"], registry=self.registry
        )
        self.alias_differs = Gauge(
            "icans_champion_alias_differs",
            "1 while the registry's champion alias points to another version than the one served", registry=self.registry,
        )
        self.reloads = Counter("icans_model_reloads_total", "Model reload outcomes", ["result"], registry=self.registry)
        self.audit_failures = Counter(
            "icans_audit_write_failures_total", "Audit records that could not be written", registry=self.registry
        )
        self.patients = Counter("icans_patients_scored_total", "Patients scored", registry=self.registry)
        self.audit_store_up = Gauge(
            "icans_audit_store_writable", "1 while the audit store accepts writes, 0 while its breaker is open",
            registry=self.registry,
        )
        self.audit_store_up.set(1)

        from serving.monitoring_runs import GAUGES

        self.monitor = {name: Gauge(f"icans_monitor_{name}", f"Latest monitoring of the served version: {name}",
                                    registry=self.registry) for name in GAUGES}
        self.monitor_verdict = Gauge("icans_monitor_verdict_info", "Latest monitoring verdict (value 1)",
                                     ["verdict"], registry=self.registry)

    def set_monitoring(self, summary: dict | None) -> None:
        """The gauges from the newest monitoring summary of the served version (NaN where none)."""
        summary = summary or {}
        for name, gauge in self.monitor.items():
            value = len(summary["alarms"]) if name == "alarms" and "alarms" in summary else summary.get(name)
            gauge.set(float(value) if isinstance(value, (int, float)) else float("nan"))
        self.monitor_verdict.clear()
        if summary.get("verdict"):
            self.monitor_verdict.labels(summary["verdict"]).set(1)

    def set_model(self, name: str, version: str, run_id: str | None) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, run_id or "").set(1)


class LogThrottle:
    """Repeated identical errors are logged once per interval, with the count of the repeats.

    The first occurrence of a key is logged at once; later ones within `interval_s` are counted,
    and the next occurrence after the interval logs the message with "(N more in the last T s)".
    Thread-safe; the keys are bounded (an unbounded key set is cleared)."""

    def __init__(self, interval_s: float = 10.0, max_keys: int = 1000) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._seen: dict[Any, list[float]] = {}  # key -> [last logged at, suppressed count]
        self._lock = threading.Lock()

    def __call__(self, logger: logging.Logger, level: int, key: Any, msg: str, *args: Any) -> bool:
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return False
            if len(self._seen) >= self.max_keys:
                self._seen.clear()
            suppressed = int(entry[1]) if entry is not None else 0
            since = now - entry[0] if entry is not None else 0.0
            self._seen[key] = [now, 0]
        if suppressed:
            logger.log(level, msg + " (and %d more like it in the last %.0f s)", *args, suppressed, since)
        else:
            logger.log(level, msg, *args)
        return True


class RequestContextMiddleware:
    """X-Request-ID in and out, a body-size limit (413), and per-route metrics."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value
            elif name == b"content-length":
                length = value
        request_id = rid.decode() if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status_holder = [500]
        header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self._dispatch(scope, receive, send_wrapper, request_id, length)
        except BaseException:
            status_holder[0] = 500  # counted, then Starlette's error handler answers it
            raise
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status_holder[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _dispatch(self, scope: dict, receive: Any, send_wrapper: Any, request_id: str, length: Any) -> None:
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._reject(send_wrapper, request_id, 413, f"request body over {self.max_body} bytes")
        elif scope["method"] in ("POST", "PUT", "PATCH"):
            # read the (small) body up front so that a chunked upload cannot exceed the limit
            chunks, total, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > self.max_body:
                    await self._reject(send_wrapper, request_id, 413, f"request body over {self.max_body} bytes")
                    break
                chunks.append(chunk)
                more = message.get("more_body", False)
            else:
                body = b"".join(chunks)
                replayed = False

                async def replay() -> dict:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_wrapper)
        else:
            await self.app(scope, receive, send_wrapper)

    @staticmethod
    async def _reject(send: Any, request_id: str, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail, "request_id": request_id}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
