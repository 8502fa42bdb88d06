"""A small HTTP/1.1 keep-alive load generator: the fallback when `wrk` is not installed.

Runs in its own process (`python -m bench.loadgen ...`) so that it never shares an interpreter
with the server or the orchestrator. `concurrency` connections each send their next request as
soon as the previous answer has arrived (closed loop, like wrk), for `duration` seconds or until
`requests` answers in total. Prints one line `BENCH_JSON {...}` with the same keys as
bench/wrk_report.lua. Only 127.0.0.1 is accepted.

It is slower than wrk (one Python core drives every connection), so at high concurrency it can
be the bottleneck: the results say which generator produced them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import numpy as np


def build_request(host: str, port: int, path: str, body: bytes | None, headers: list[str] = ()) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """(status, body bytes) of one response; handles Content-Length and chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        await reader.readexactly(n)
        return status, len(head) + n
    if headers.get("transfer-encoding", "").lower() == "chunked":
        total = len(head)
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            total += len(size_line) + size + 2
            if size == 0:
                return status, total
    return status, len(head)


async def _run(url: str, body: bytes | None, concurrency: int, duration: float, requests: int | None,
               timeout: float, headers: list[str] = ()) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host != "127.0.0.1":
        raise SystemExit("loadgen: only http://127.0.0.1 is allowed")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = build_request(host, port, path, body, headers)
    latencies: list[float] = []
    counts = {"requests": 0, "bytes": 0, "errors_connect": 0, "errors_read": 0, "errors_write": 0,
              "errors_status": 0, "errors_timeout": 0, "non_2xx": 0}
    started = time.perf_counter()
    deadline = started + duration
    budget = {"left": requests if requests is not None else float("inf")}

    async def worker() -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError):
            counts["errors_connect"] += 1
            return
        try:
            while time.perf_counter() < deadline and budget["left"] > 0:
                budget["left"] -= 1
                t0 = time.perf_counter()
                try:
                    writer.write(raw)
                    await writer.drain()
                except OSError:
                    counts["errors_write"] += 1
                    return
                try:
                    status, nbytes = await asyncio.wait_for(read_response(reader), timeout)
                except asyncio.TimeoutError:
                    counts["errors_timeout"] += 1
                    return
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    counts["errors_read"] += 1
                    return
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += 1
                counts["bytes"] += nbytes
                if not 200 <= status < 300:
                    counts["non_2xx"] += 1
                if status >= 400:
                    counts["errors_status"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    lat = np.asarray(latencies) * 1e6 if latencies else np.zeros(1)
    return {
        **counts,
        "duration_us": int(elapsed * 1e6),
        "latency_mean_us": float(lat.mean()),
        "latency_max_us": int(lat.max()),
        "p50_us": int(np.percentile(lat, 50)),
        "p90_us": int(np.percentile(lat, 90)),
        "p99_us": int(np.percentile(lat, 99)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--body-file", default=None, help="POST this JSON file (default: GET)")
    ap.add_argument("--concurrency", "-c", type=int, default=1)
    ap.add_argument("--duration", "-d", type=float, default=5.0)
    ap.add_argument("--requests", "-n", type=int, default=None, help="stop after this many answers")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--header", "-H", action="append", default=[], help="extra header line 'Name: value'")
    args = ap.parse_args(argv)
    body = open(args.body_file, "rb").read() if args.body_file else None
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    duration = args.duration if args.requests is None else max(args.duration, 3600.0)
    result = run_loop(_run(args.url, body, args.concurrency, duration, args.requests, args.timeout, args.header))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
