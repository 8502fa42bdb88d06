"""Soak under faults: load for 10 minutes on two workers while a worker is killed every minute, the
audit store stalls once, and the model is reloaded live (issue 13).

`python -m bench.soak [--seconds 600] [--rate 60] [--kill-every 60] [--out-dir bench]`: trains a
model into a temporary store, serves it with `icans-risk serve --workers 2`, holds a fixed request
rate over 127.0.0.1, SIGKILLs one worker every `--kill-every` seconds (uvicorn starts another),
holds a SQLite write lock for 5 s a third of the way in, moves @champion and calls POST
/v1/admin/reload two thirds of the way in, then checks the invariants: exactly one audit record
per answer given (200) and none for an answer not given, no request id audited twice, and every
answer stamped with a version that was champion. Writes bench/soak.md and bench/soak.json.
Bounded in time; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import PacedLoad, request, second_version, served as serve_trained

ROOT = Path(__file__).resolve().parents[1]


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes under the server (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    workers = []
    for child in map(int, out):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue
    return sorted(workers)


def run(seconds: float, rate: float, kill_every: float, out_dir: Path | None, threads: int = 8) -> dict:
    import signal
    import sqlite3

    from core.contract import example_request

    events: list[str] = []
    with serve_trained("icans-soak-", workers=2, extra_env={"ICANS_VALIDATION": "split"}) as svc:
        port, score, admin, env, server, work = svc.port, svc.score, svc.admin, svc.env, svc.server, svc.work
        client, old, new = second_version(env)

        body = json.dumps(example_request()).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {score}"}
        load = PacedLoad(port, body, headers, seconds, rate, threads, timeout=15.0).start()
        statuses, versions, answered_ids, latencies = load.statuses, load.versions, load.answered_ids, load.latencies
        start, stop_at = load.started, load.stop_at
        stalled = reloaded = False
        next_kill = start + kill_every
        while time.perf_counter() < stop_at:
            now = time.perf_counter()
            if now >= next_kill:
                kids = _workers(server.pid)
                if kids:
                    victim = kids[len(events) % len(kids)]
                    os.kill(victim, signal.SIGKILL)
                    events.append(f"{now - start:.0f} s: worker {victim} killed (SIGKILL); workers before: {kids}")
                next_kill += kill_every
            if not stalled and now >= start + seconds / 3:
                stalled = True
                db = sqlite3.connect(str(work / "service.db"), timeout=30)
                db.execute("BEGIN IMMEDIATE")
                events.append(f"{now - start:.0f} s: audit store write-locked for 5 s")
                time.sleep(5)
                db.rollback()
                db.close()
            if not reloaded and now >= start + 2 * seconds / 3:
                reloaded = True
                client.set_registered_model_alias("icans-risk", "champion", new.version)
                try:
                    status, payload = request(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "POST",
                                               "/v1/admin/reload", b"", {"authorization": f"Bearer {admin}"})
                    events.append(f"{now - start:.0f} s: live reload -> {status} {json.loads(payload).get('result')}")
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    events.append(f"{now - start:.0f} s: live reload call failed ({type(exc).__name__}); "
                                  "the workers' poll picks the new champion up")
            time.sleep(0.2)
        elapsed = load.join()
        time.sleep(1.0)  # records of the last answers are committed before they leave; nothing to wait for

        from serving.store import Store

        store = Store(env["ICANS_STORE_URL"], env["ICANS_AUDIT_HMAC_KEY"].encode())
        audited_ids = [row["request_id"] for chunk in store.iter_audit() for row in chunk]
        store.close()
        served = statuses.get(200, 0)
        latencies.sort()
        result = {
            "seconds": round(elapsed, 1),
            "target_rate_per_s": rate,
            "requests": sum(statuses.values()),
            "status_counts": {str(k): v for k, v in statuses.items()},
            "answers_200": served,
            "audit_records": len(audited_ids),
            "audit_records_without_answer": len(set(audited_ids) - set(answered_ids)),
            # what the caller saw for each of those: -1 = its worker was killed between the commit of the
            # record and the answer leaving (a race no server can close), 503 = refused after recording
            "statuses_seen_by_records_without_answer": sorted(
                load.status_by_id.get(i, 0) for i in set(audited_ids) - set(answered_ids)),
            "answers_without_audit_record": len(set(answered_ids) - set(audited_ids)),
            "request_ids_audited_twice": len(audited_ids) - len(set(audited_ids)),
            "versions_served": dict(versions),
            "events": events,
            "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        }
        result["ok"] = (len(audited_ids) == served and result["audit_records_without_answer"] == 0
                        and result["answers_without_audit_record"] == 0 and result["request_ids_audited_twice"] == 0
                        and set(versions) <= {str(old.version), str(new.version)})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "soak.json").write_text(json.dumps(result, indent=2))
        lines = [
            "# Soak under faults",
            "",
            f"{result['requests']} requests in {result['seconds']} s at a target of {rate:g}/s on 2 workers; "
            "what happened:",
            "",
            *[f"- {e}" for e in result["events"]],
            "",
            "| invariant or measure | value |",
            "|---|---|",
            f"| answers given (200) / audit records | {result['answers_200']} / {result['audit_records']} |",
            f"| audit records without an answer | {result['audit_records_without_answer']} |",
            f"| answers without an audit record | {result['answers_without_audit_record']} |",
            f"| request ids audited twice | {result['request_ids_audited_twice']} |",
            f"| status counts (-1: connection lost with a killed worker) | {result['status_counts']} |",
            f"| answers by version | {result['versions_served']} |",
            f"| latency p50 / p99 | {result['latency_ms_p50']} / {result['latency_ms_p99']} ms |",
            f"| all invariants hold | {result['ok']} |",
        ]
        (out_dir / "soak.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    result = run(args.seconds, args.rate, args.kill_every, args.out_dir)
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
