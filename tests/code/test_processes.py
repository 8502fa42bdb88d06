"""tests/processes.run_group: a test that times out leaves no process of its child's behind."""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers import run_group


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie awaiting its reaper counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_timeout_kills_the_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    with pytest.raises(AssertionError, match="did not finish"):
        run_group(["sh", "-c", script], timeout=1.0)
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_finished_command_returns_its_output():
    proc = run_group(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
