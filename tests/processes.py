"""Child processes in tests: each in its own process group, and the whole group killed on timeout.

`subprocess.run(timeout=...)` kills only the direct child; a training, a bench run or a server it
started would outlive the test and load the machine for the tests after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def run_group(argv: Sequence[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """subprocess.run with capture and text; on timeout the child's whole process group is killed."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{argv[:3]} did not finish within {timeout:.0f} s (its process group was killed)"
                             f"\n{(out or '')[-3000:]}\n{(err or '')[-3000:]}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group started by `proc` (it is its own session leader)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
