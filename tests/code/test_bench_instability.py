"""The instability benchmark's coverage measure (bench/instability.py), on constructed intervals."""

import numpy as np
import pytest

from bench.instability import coverage


def test_coverage_counts_targets_inside_the_interval_ends_included():
    low = np.array([0.10, 0.10, 0.10, 0.10, 0.20])
    high = np.array([0.20, 0.20, 0.20, 0.20, 0.30])
    target = np.array([0.10, 0.20, 0.15, 0.25, 0.19])  # two ends, one inside, one above, one below
    assert coverage(low, high, target) == pytest.approx(3 / 5)


def test_coverage_of_a_known_spread():
    # targets drawn from N(0, 1): the central 95% interval covers about 95% of them
    rng = np.random.default_rng(0)
    target = rng.normal(size=200_000)
    n = len(target)
    assert coverage(np.full(n, -1.959964), np.full(n, 1.959964), target) == pytest.approx(0.95, abs=0.003)


def test_coverage_refuses_mismatched_rows():
    with pytest.raises(ValueError):
        coverage(np.zeros(3), np.ones(3), np.zeros(4))
