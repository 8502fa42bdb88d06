"""The benchmark's processes: commands timed to completion (wall time, peak RSS), servers started
in their own session and stopped with all their workers, their CPU time from /proc, and the small
HTTP client the steps check answers with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from bench.plan import BIN, HOST, ROOT


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def parse_bench_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"no BENCH_JSON line in output:\n{text[-2000:]}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, timeout: float = 60.0, header: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (not their children), from /proc/<pid>/stat."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


def run_timed(argv: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT) -> dict[str, Any]:
    """Run a command to completion: wall seconds, peak RSS (MB) and its output."""
    gnu_time = Path("/usr/bin/time")
    use_time = gnu_time.exists()
    with tempfile.NamedTemporaryFile("r", suffix=".time", delete=False) as tf:
        time_file = tf.name
    full = [str(gnu_time), "-v", "-o", time_file, *argv] if use_time else argv
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    peak_kb: float | None = None
    method = "/usr/bin/time -v"
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", Path(time_file).read_text())
        peak_kb = float(m.group(1)) if m else None
    else:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak_kb = float(after) if after > before else None
        method = "getrusage(RUSAGE_CHILDREN).ru_maxrss (a lower bound if an earlier child was larger)"
    Path(time_file).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": peak_kb / 1024 if peak_kb else None,
        "rss_method": method,
        "stdout": proc.stdout,
    }


class Server:
    """A server subprocess in its own session, so that it and its workers are stopped together."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, log_dir: Path):
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.spawned_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, timeout: float) -> float:
        """Seconds from spawn until `path` answers 200."""
        assert self.proc is not None
        deadline = self.spawned_at + timeout
        while True:
            with contextlib.suppress(OSError):
                status, _ = http_get(self.url + path, timeout=1.0)
                if status == 200:
                    return time.perf_counter() - self.spawned_at
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")
            if "giving up loading the model" in self.log_tail(20_000):
                raise RuntimeError(f"{self.name} could not load the model:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} not ready on {path} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def wait_all_workers(self, path: str, workers: int, timeout: float) -> float:
        """Seconds from spawn until `path` answered 200 on 10 x workers fresh connections in a row.

        With several workers, the first 200 comes from one of them; the others may still be loading.
        """
        deadline = time.perf_counter() + timeout
        streak = 0
        while streak < 10 * workers:
            try:
                status, _ = http_get(self.url + path, timeout=1.0)
            except OSError:
                status = 0
            streak = streak + 1 if status == 200 else 0
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name}: not every worker ready on {path} within {timeout:.0f} s")
            if streak == 0:
                time.sleep(0.05)
        return time.perf_counter() - self.spawned_at

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and every process under it."""
        assert self.proc is not None
        return cpu_seconds([self.proc.pid, *descendants(self.proc.pid)])

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the process id we started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()
        self.proc = None


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()
