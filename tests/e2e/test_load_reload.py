"""The load test of the live-reload path, short: no failed request, every answer stamped with a
version that was champion, and exactly one audit record per answer (no speed thresholds)."""

from bench.load_reload import run


def test_steady_load_with_a_reload_in_the_middle():
    result = run(seconds=8, rate=40, out_dir=None)
    assert result["failed"] == 0, result["status_counts"]
    assert result["reload"]["result"] == "swapped", result["reload"]
    assert set(result["versions_served"]) == set(result["versions_registered"])  # both served
    assert result["audit_records"] == result["status_counts"]["200"]
    assert result["ok"]
