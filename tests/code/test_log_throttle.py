"""Repeated identical errors are logged once per interval, with the count of the repeats."""

from __future__ import annotations

import logging

from serving.observability import LogThrottle


def test_repeats_are_counted_not_logged(caplog, monkeypatch):
    import serving.observability as obs

    now = [1000.0]
    monkeypatch.setattr(obs.time, "monotonic", lambda: now[0])
    throttle = LogThrottle(interval_s=10)
    log = logging.getLogger("throttle-test")
    with caplog.at_level(logging.ERROR, logger="throttle-test"):
        for _ in range(28_000):
            throttle(log, logging.ERROR, "audit", "audit write failed: %s", "OSError")
        now[0] += 11
        throttle(log, logging.ERROR, "audit", "audit write failed: %s", "OSError")
        throttle(log, logging.ERROR, "other", "key store unavailable: %s", "OperationalError")
    assert [r.getMessage() for r in caplog.records] == [
        "audit write failed: OSError",
        "audit write failed: OSError (and 27999 more like it in the last 11 s)",
        "key store unavailable: OperationalError",
    ]
