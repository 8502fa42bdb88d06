"""pipeline/progress: lines when not a terminal, nothing when quiet, a bar on a terminal."""

from __future__ import annotations

import io

import pytest

from pipeline.tracking import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset():
    yield
    progress.configure("auto", None)


def test_lines_when_not_a_terminal_say_the_stage_the_count_and_the_end():
    out = io.StringIO()
    progress.configure("auto", out)
    assert list(progress.steps(range(20), "repeated cross-validation")) == list(range(20))
    lines = out.getvalue().splitlines()
    assert lines[0] == "repeated cross-validation: 20 steps ..."
    assert any(line.startswith("repeated cross-validation: 2/20 in ") and "left" in line for line in lines)
    assert lines[-1].startswith("repeated cross-validation: done, 20/20 in ")
    assert len(lines) <= 12  # at most one line each 10%, not one per step


def test_quiet_prints_nothing():
    out = io.StringIO()
    progress.configure("quiet", out)
    assert sum(progress.steps(range(5), "x")) == 10
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_with_elapsed_and_remaining():
    out = _Tty()
    progress.configure("auto", out)
    with progress.stage("bootstrap models", 4) as s:
        for _ in range(4):
            s.advance()
    text = out.getvalue()
    assert "bootstrap models" in text and "4/4" in text and "elapsed" in text and "left" in text
    assert "\n" in text


def test_the_estimate_is_the_mean_step_time_times_what_is_left(monkeypatch):
    clock = iter([0.0, 10.0, 10.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.configure("quiet")
    s = progress.stage("x", 5)  # t0 = 0
    s.done = 1
    assert s.eta() == pytest.approx(40.0)  # 10 s per step, 4 left
