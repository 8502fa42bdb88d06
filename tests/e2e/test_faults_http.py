"""Fault cases at the HTTP edge (issue 13, item 2), against a real `icans-risk serve` (uvicorn with
the guarded protocol) in a subprocess: a header that never ends, a huge header, too many fields,
a long request line, a slow body, more connections than a worker takes. `pytest -s` prints the
measured figures (other callers' latency during the attack, the worker's memory)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.contract import example_request

ROOT = Path(__file__).resolve().parents[2]
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
LIMIT_CONCURRENCY = 24
BODY = json.dumps(example_request()).encode()


def _port() -> int:
    for port in range(18100, 18200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 18100-18199")


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    settings, _ = trained
    root = tmp_path_factory.mktemp("edge")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "ICANS_ARTIFACT_ROOT": settings.artifact_root,
        "ICANS_STORE_URL": f"sqlite:///{root / 'service.db'}",
        "ICANS_AUDIT_HMAC_KEY": "edge-audit-key-0123456789abcdef",
        "ICANS_AUTH": "off",
        "ICANS_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ICANS_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "ICANS_HTTP_LIMIT_CONCURRENCY": str(LIMIT_CONCURRENCY),
        "OMP_NUM_THREADS": "1",
    }
    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, "the server exited"
            try:
                if _request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _request(port: int, method: str = "POST", path: str = "/v1/risk", body: bytes | None = BODY) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0
    finally:
        conn.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _status_of(sock: socket.socket) -> int | None:
    """The status code the server answered on a raw socket (None if it closed without one)."""
    sock.settimeout(15)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


class _Callers:
    """Other callers scoring (2 threads) while an attack runs; their latencies are kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.results: list[tuple[int, float]] = []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(2)]

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                self.results.append(_request(self.port))
            except OSError:
                self.results.append((0, 0.0))

    def __enter__(self) -> "_Callers":
        [t.start() for t in self.threads]
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        [t.join(timeout=30) for t in self.threads]

    def summary(self) -> str:
        lat = sorted(t for s, t in self.results if s == 200)
        if not lat:
            return "no answers"
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        return f"{len(lat)} answers, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms"


def test_a_header_that_never_ends_is_cut_and_others_are_served(server):
    port, pid = server
    baseline = [_request(port)[1] for _ in range(30)]
    sent = 0
    with _Callers(port) as callers:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/risk HTTP/1.1\r\nHost: x\r\nX-Never-Ends: ")
        t0 = time.perf_counter()
        try:  # stream the header for 4 s (or until the server closes the connection)
            while time.perf_counter() - t0 < 4:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        status = _status_of(sock)
        sock.close()
        time.sleep(0.5)
    baseline.sort()
    print(
        f"\n[endless header] streamed {sent / 1e6:.1f} MB of one header: status {status}; other callers "
        f"before p50 {baseline[len(baseline) // 2] * 1000:.1f} ms, during: {callers.summary()}"
    )
    assert status == 431
    assert all(s == 200 for s, _ in callers.results) and callers.results


def test_a_huge_header_is_refused_and_memory_stays_bounded(server):
    port, pid = server
    before = _rss_mb(pid)
    sock = socket.create_connection(("127.0.0.1", port))
    sent = 0
    try:
        sock.sendall(b"POST /v1/risk HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        for _ in range(300):  # 300 MB
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY)
    except OSError:
        pass
    status = _status_of(sock)
    sock.close()
    after = _rss_mb(pid)
    print(f"\n[huge header] sent {sent / 1e6:.0f} MB before the server stopped reading: status {status}; "
          f"worker RSS {before:.0f} -> {after:.0f} MB")
    assert status == 431
    assert after - before < 64  # loosely: the header never lived in the worker
    assert _request(port)[0] == 200


def test_too_many_fields_and_a_long_request_line(server):
    port, _ = server
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-F%d: 1\r\n" % i for i in range(200)) + b"\r\n")
    assert _status_of(sock) == 431
    sock.close()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status_of(sock) == 414
    sock.close()
    assert _request(port, "GET", "/healthz", None)[0] == 200  # a normal request still passes


def test_slow_head_and_slow_body_get_408(server):
    port, _ = server
    drip = socket.create_connection(("127.0.0.1", port))
    drip.sendall(b"POST /v1/risk HTTP/1.1\r\nHost: x\r\nX-Drip: ")
    t0 = time.perf_counter()
    status = None
    with _Callers(port) as callers:
        try:  # one byte every 100 ms: each byte is progress, but the head never ends
            while time.perf_counter() - t0 < HEADER_TIMEOUT_S + 3:
                drip.sendall(b"a")
                time.sleep(0.1)
        except OSError:
            pass
        status = _status_of(drip)
        took = time.perf_counter() - t0
    drip.close()
    print(f"\n[slow header] one byte per 0.1 s, never ending: status {status} after {took:.1f} s "
          f"(limit {HEADER_TIMEOUT_S:.0f} s); others: {callers.summary()}")
    assert status == 408
    assert all(s == 200 for s, _ in callers.results)

    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /v1/risk HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                 % len(BODY) + BODY[:10])
    assert _status_of(slow) == 408
    slow.close()


def test_requests_in_flight_beyond_the_limit_get_503_but_idle_connections_and_probes_do_not(server):
    """The limit counts requests in flight (issue 25): idle connections leave every endpoint
    answering; requests in flight (heads sent, bodies pending) fill it, and then everything but
    the probes gets 503 until they go."""
    port, _ = server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(LIMIT_CONCURRENCY + 2)]
    time.sleep(0.3)
    with_idle = [_request(port, "GET", path, None)[0] for path in ("/healthz", "/readyz", "/v1/model")]
    for s in idle:
        s.close()
    head = b"POST /v1/risk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    pending = []
    for _ in range(LIMIT_CONCURRENCY):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(head)  # the head only: the request is in flight, waiting for its body
        pending.append(s)
    time.sleep(0.3)
    full = {path: _request(port, "GET", path, None)[0] for path in ("/healthz", "/readyz", "/v1/model")}
    for s in pending:
        s.close()
    time.sleep(0.5)
    after = _request(port, "GET", "/v1/model", None)[0]
    print(f"\n[connections] {len(idle)} idle connections (limit {LIMIT_CONCURRENCY}): {with_idle}; "
          f"{len(pending)} requests in flight: {full}; after they went: {after}")
    assert with_idle == [200, 200, 200]
    assert full == {"/healthz": 200, "/readyz": 200, "/v1/model": 503}
    assert after == 200
