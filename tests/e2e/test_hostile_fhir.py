"""A hostile FHIR server and hostile connections against a real `icans-risk serve` (issue 25,
findings 1, 2, 5 and 9), on ports 8400-8499.

The service runs in a subprocess with one FHIR server on its allow-list (`/fhir` of the hostile
server below); each test sends a `patient-view` call whose prefetch lacks a required key, so the
service fetches it from `fhirServer` with the EHR's token. The hostile server's behaviour is chosen
by the path under /fhir: `ok` (the chart), `redirect` (302 to a sink that records what reaches
it), `drip` (one byte every 2 s, forever), `paged` (4.2 MB pages with next links), `badstatus`
(a broken status line), `link5` (a Bundle with `"link": 5`). `pytest -s` prints the figures.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Chart

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ehr-access-token-secret-0123"
DEADLINE_S = 6.0
READ_TIMEOUT_S = 3.0
SERVICE = "/cds-services/icans-risk"
PAGE_BYTES = 4_200_000


def _ports(n: int) -> list[int]:
    """n free ports in 8400-8499 (this helper's range)."""
    found = []
    for port in range(8400, 8500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    pytest.skip("no free ports in 8400-8499")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the service hanging up on a drip is the point, not an error


class Hostile:
    """The FHIR server (`/fhir/<mode>/...`) and the sink a redirect points at; both record requests."""

    def __init__(self, port: int, sink_port: int, chart: Chart) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.sink_seen: list[tuple[str, str | None]] = []
        self.served = chart.prefetch()
        self.base = f"http://127.0.0.1:{port}/fhir"
        self.stop = threading.Event()
        outer = self

        class Sink(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.sink_seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        class Fhir(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.seen.append((self.path, self.headers.get("Authorization")))
                parts = self.path.split("/")
                mode = parts[2] if len(parts) > 2 else ""
                try:
                    getattr(self, f"_{mode}", self._ok)()
                except OSError:
                    pass

            def _json(self, data: Any) -> None:
                payload = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _ok(self) -> None:
                key = "ldh" if "2532-0" in self.path else None
                self._json(outer.served[key] if key else {"resourceType": "OperationOutcome", "issue": []})

            def _redirect(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{sink_port}/steal{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _drip(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"{")
                self.wfile.flush()
                while not outer.stop.wait(2.0):
                    self.wfile.write(b" ")
                    self.wfile.flush()

            def _paged(self) -> None:
                page = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 0
                filler = "x" * 1000
                n = PAGE_BYTES // 1100
                entries = [{"resource": {"resourceType": "Basic", "id": f"b{page}-{i}", "code": {"text": filler}}}
                           for i in range(n)]
                bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries,
                          "link": [{"relation": "next", "url": f"{outer.base}/paged/Observation?page={page + 1}"}]}
                self._json(bundle)

            def _badstatus(self) -> None:
                self.wfile.write(b"HTTP/1.1 2OO NOT A STATUS\r\nContent-Length: 2\r\n\r\n{}")
                self.close_connection = True

            def _link5(self) -> None:
                self._json({"resourceType": "Bundle", "type": "searchset", "link": 5, "entry": []})

            def log_message(self, *args):
                pass

        self.servers = [_Server(("127.0.0.1", port), Fhir), _Server(("127.0.0.1", sink_port), Sink)]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        for s in self.servers:
            s.shutdown()
            s.server_close()


def _request(port: int, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"content-type": "application/json"} if payload else {})
        r = conn.getresponse()
        data = r.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {"text": data.decode("utf-8", "replace")}
        return r.status, parsed, time.perf_counter() - t0
    finally:
        conn.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def env(trained, tmp_path_factory):
    settings, _ = trained
    root = tmp_path_factory.mktemp("hostile")
    port, fhir_port, sink_port = _ports(3)
    chart = Chart("pat-hostile", now=datetime.now(UTC))
    hostile = Hostile(fhir_port, sink_port, chart)
    log_path = root / "service.log"
    environ = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "ICANS_ARTIFACT_ROOT": settings.artifact_root,
        "ICANS_STORE_URL": f"sqlite:///{root / 'service.db'}",
        "ICANS_AUDIT_HMAC_KEY": "hostile-audit-key-0123456789abcdef",
        "ICANS_AUTH": "off",
        "ICANS_CDS_FHIR_SERVER_ALLOWLIST": json.dumps([hostile.base]),
        "ICANS_CDS_FETCH_TIMEOUT_S": str(READ_TIMEOUT_S),
        "ICANS_CDS_FETCH_DEADLINE_S": str(DEADLINE_S),
        "OMP_NUM_THREADS": "1",
    }
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "serve", "--port", str(port)],
            cwd=ROOT, env=environ, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if _request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield {"port": port, "hostile": hostile, "chart": chart, "pid": proc.pid, "log": log_path}
    finally:
        hostile.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def hook(env: dict, fhir_server: str) -> dict[str, Any]:
    """A patient-view call without the required `ldh` key, pointing at `fhir_server`."""
    prefetch = env["chart"].prefetch()
    del prefetch["ldh"]
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": env["chart"].pid},
        "prefetch": prefetch,
        "fhirServer": fhir_server,
        "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "icans-risk"},
    }


def _worker_pid(env: dict) -> int:
    kids = _children(env["pid"])
    return kids[0] if kids else env["pid"]


def test_an_allowed_server_is_still_fetched_from(env):
    status, body, _ = _request(env["port"], "POST", SERVICE, hook(env, env["hostile"].base + "/ok"))
    assert status == 200, body
    assert any("2532-0" in path and auth == f"Bearer {TOKEN}" for path, auth in env["hostile"].seen)


def test_a_redirect_is_not_followed_and_the_token_goes_nowhere_else(env):
    hostile = env["hostile"]
    status, body, _ = _request(env["port"], "POST", SERVICE, hook(env, hostile.base + "/redirect"))
    print(f"\nredirect to another port: answer {status}; requests reaching the redirect's target: "
          f"{len(hostile.sink_seen)}, with the EHR token: {sum(a == f'Bearer {TOKEN}' for _, a in hostile.sink_seen)}")
    assert status == 412, body  # ldh is required and could not be fetched
    assert any("/fhir/redirect/" in p for p, _ in hostile.seen)  # the allowed server was asked
    assert hostile.sink_seen == []


@pytest.mark.parametrize("tail", ["/ok/../../internal", "/ok/%2e%2e/%2E%2E/internal", "/ok/%252e%252e/x",
                                  "/ok/..%2finternal", "/ok/.."])
def test_dot_segments_do_not_pass_the_allow_list(env, tail):
    hostile = env["hostile"]
    before = len(hostile.seen)
    status, body, _ = _request(env["port"], "POST", SERVICE, hook(env, hostile.base + tail))
    reached = hostile.seen[before:]
    print(f"\nfhirServer .../fhir{tail}: answer {status}; requests made with the token: {len(reached)}")
    assert status == 412, body
    assert reached == []


def test_a_slow_drip_is_cut_at_the_call_deadline(env):
    pid = _worker_pid(env)
    rss0 = _rss_mb(pid)
    status, body, took = _request(env["port"], "POST", SERVICE, hook(env, env["hostile"].base + "/drip"))
    print(f"\nslow drip (1 byte / 2 s, read timeout {READ_TIMEOUT_S} s, deadline {DEADLINE_S} s): "
          f"answer {status} after {took:.1f} s; worker RSS {rss0:.0f} -> {_rss_mb(pid):.0f} MB")
    assert status == 412, body
    assert took < DEADLINE_S + 4


def test_a_paged_response_is_capped_in_bytes(env):
    pid = _worker_pid(env)
    rss0 = _rss_mb(pid)
    before = len(env["hostile"].seen)
    status, body, took = _request(env["port"], "POST", SERVICE, hook(env, env["hostile"].base + "/paged"))
    pages = len(env["hostile"].seen) - before
    rss1 = _rss_mb(pid)
    print(f"\npaged ({PAGE_BYTES / 1e6:.1f} MB pages with next links): answer {status} after {took:.1f} s, "
          f"{pages} pages requested; worker RSS {rss0:.0f} -> {rss1:.0f} MB")
    assert status == 412, body
    assert pages <= 2  # 8 MB per call by default: the second page crosses the cap
    assert rss1 - rss0 < 250


@pytest.mark.parametrize("mode", ["badstatus", "link5"])
def test_broken_fhir_answers_fail_the_key_not_the_service(env, mode):
    status, body, _ = _request(env["port"], "POST", SERVICE, hook(env, env["hostile"].base + f"/{mode}"))
    assert status == 412, body
    assert "Traceback" not in env["log"].read_text()


def test_probes_answer_during_41_slow_cds_calls(env):
    port = env["port"]
    with ThreadPoolExecutor(41) as pool:
        calls = [pool.submit(_request, port, "POST", SERVICE, hook(env, env["hostile"].base + "/drip"))
                 for _ in range(41)]
        time.sleep(1.5)  # the calls are fetching
        probes = []
        for path in ["/healthz", "/readyz", "/v1/model"] * 3:
            status, _, took = _request(port, "GET", path, timeout=30)
            probes.append((path, status, took))
        results = [c.result() for c in calls]
    worst = max(t for _, _, t in probes)
    slowest_call = max(t for _, _, t in results)
    print(f"\n41 slow CDS calls: probes {[(p, s, round(t, 3)) for p, s, t in probes]}; worst {worst * 1000:.0f} ms; "
          f"calls answered {sorted({s for s, _, _ in results})}, slowest {slowest_call:.1f} s")
    assert all(s == 200 for _, s, _ in probes)
    assert worst < 2.0
    assert {s for s, _, _ in results} == {412}


def test_600_idle_connections_do_not_take_the_service_down(env):
    port = env["port"]
    idle = []
    try:
        for _ in range(600):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        probes = [_request(port, "GET", path, timeout=30) for path in ["/healthz", "/readyz", "/v1/model"] * 3]
    finally:
        for s in idle:
            s.close()
    worst = max(t for _, _, t in probes)
    print(f"\n600 idle connections: statuses {[s for s, _, _ in probes]}; worst {worst * 1000:.0f} ms")
    assert all(s == 200 for s, _, _ in probes)


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/risk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /cds-services/icans-risk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
])
def test_pipelined_requests_hung_up_on_do_not_flood_the_log(env, request_bytes):
    """1,200 requests pipelined on a connection that is reset before the answers are read."""
    import struct

    before = env["log"].read_text()
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", env["port"]), timeout=10)
        s.sendall(request_bytes * 1200)
        s.recv(4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a polite close
        s.close()
    time.sleep(3)
    assert _request(env["port"], "GET", "/healthz")[0] == 200
    added = env["log"].read_text()[len(before):]
    lines = added.splitlines()
    print(f"\n4 connections x 1,200 pipelined {request_bytes.split()[1].decode()}: {len(lines)} log lines, "
          f"{added.count('Traceback')} tracebacks")
    assert "Traceback" not in added
    assert len(lines) <= 8
