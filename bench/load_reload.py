"""Steady load with a live model reload in the middle (issue 5's load test).

`python -m bench.load_reload [--seconds 60] [--rate 100] [--out-dir bench]`: trains a model
into a temporary MLflow store, serves it with API keys and the audit trail on, holds a fixed
request rate from a second process's threads over 127.0.0.1, moves @champion to a new version
half-way and calls POST /v1/admin/reload, then checks: zero failed requests, every answer
stamped with a version that was champion while it ran, and the audit count equal to the
answers served. Bounded in time; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

from bench.harness import PacedLoad, request, second_version, served as serve_trained

ROOT = Path(__file__).resolve().parents[1]


def run(seconds: float, rate: float, out_dir: Path | None, threads: int = 8) -> dict:
    from core.contract import example_request

    with serve_trained("icans-load-") as svc:
        port, score, admin, env = svc.port, svc.score, svc.admin, svc.env
        client, old, new = second_version(env)

        body = json.dumps(example_request()).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {score}"}
        load = PacedLoad(port, body, headers, seconds, rate, threads).start()
        statuses, versions, latencies = load.statuses, load.versions, load.latencies

        # half-way: a new champion, and a live reload while the load runs
        time.sleep(seconds / 2)
        client.set_registered_model_alias("icans-risk", "champion", new.version)
        status, payload = request(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "POST",
                                   "/v1/admin/reload", b"", {"authorization": f"Bearer {admin}"})
        reload_answer = json.loads(payload)
        elapsed = load.join()

        from serving.store import Store

        store = Store(env["ICANS_STORE_URL"], env["ICANS_AUDIT_HMAC_KEY"].encode())
        audited = store.count()
        served = statuses.get(200, 0)
        latencies.sort()
        result = {
            "seconds": round(elapsed, 1),
            "target_rate_per_s": rate,
            "achieved_rate_per_s": round(sum(statuses.values()) / elapsed, 1),
            "requests": sum(statuses.values()),
            "status_counts": {str(k): v for k, v in statuses.items()},
            "failed": sum(v for k, v in statuses.items() if k != 200),
            "versions_served": dict(versions),
            "versions_registered": [str(old.version), str(new.version)],
            "reload": {"http_status": status, **reload_answer},
            "audit_records": audited,
            "audit_equals_served": audited == served,
            "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
            "ok": statuses.get(200, 0) == sum(statuses.values())
            and audited == served
            and set(versions) <= {str(old.version), str(new.version)}
            and reload_answer.get("result") == "swapped",
        }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "load_reload.json").write_text(json.dumps(result, indent=2))
        lines = [
            "# Load with a live reload",
            "",
            f"{result['requests']} requests in {result['seconds']} s at a target of {rate:g}/s "
            f"(achieved {result['achieved_rate_per_s']}/s), reload half-way: {result['reload'].get('reason')}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| failed requests | {result['failed']} |",
            f"| answers by version | {result['versions_served']} |",
            f"| audit records / answers served | {audited} / {served} |",
            f"| latency p50 / p99 | {result['latency_ms_p50']} / {result['latency_ms_p99']} ms |",
            f"| all checks passed | {result['ok']} |",
        ]
        (out_dir / "load_reload.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    result = run(args.seconds, args.rate, args.out_dir)
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
