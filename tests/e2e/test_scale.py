"""The production profile for real: an MLflow tracking server on PostgreSQL, two concurrent
trainings into it, two stateless service replicas, and a champion switch under load.

Runs against the PostgreSQL on 127.0.0.1:5432 (CI has it): creates two databases of its own,
icans_scale_<random>_mlflow (MLflow's backend store) and icans_scale_<random>_service (API keys
and the audit trail, shared by both replicas), and drops them afterwards. Unreachable PostgreSQL
fails the test unless ICANS_SKIP_POSTGRES=1. Only 127.0.0.1 is ever contacted; every wait and
every load loop is bounded in time.

The commands below (`*_argv`) are the ones deploy/docker-compose.yml and deploy/k8s/ run;
tests/e2e/test_deploy_files.py checks that they stay identical. Timings of the concurrent
trainings and of the switch-over seen by each replica are printed and written to
<pytest tmp>/scale-timings.json.
"""

from __future__ import annotations

import json
import re
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.contract import example_request
from tests.helpers import PG_HOST, PG_PORT, pg_connect
from tests.helpers import run_group

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MODEL = "icans-risk"
RELOAD_INTERVAL_S = 1.0
SWITCH_DEADLINE_S = 30.0  # asserted bound; the measured value is reported
TRAIN_N, TRAIN_SEEDS = 600, (11, 12)


# ---------------------------------------------------------------------------------------------
# The production commands (deploy/ runs exactly these; test_deploy_files.py checks it)


def mlflow_server_argv(backend_store_uri: str, artifacts_destination: str, host: str, port: int) -> list[str]:
    return [
        "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination,
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]


def serve_argv(host: str, port: int) -> list[str]:
    return ["icans-risk", "serve", "--host", host, "--port", str(port), "--workers", "1"]


def train_argv(n: int, seed: int) -> list[str]:
    return ["icans-risk", "train", "--n", str(n), "--seed", str(seed)]


def keys_create_argv(client: str) -> list[str]:
    return ["icans-risk", "keys", "create", "--client", client, "--scope", "score"]


# Environment of the MLflow server, the trainers and the replicas. The keys (not the values,
# which are per deployment) are the production profile: deploy/ sets each of them.
MLFLOW_SERVER_ENV_KEYS = ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",)
ICANS_ENV_KEYS = (
    "ICANS_ENV",
    "MLFLOW_TRACKING_URI",
    "ICANS_ARTIFACT_ROOT",
    "ICANS_STORE_URL",
    "ICANS_AUDIT_HMAC_KEY",
    "ICANS_AUTH",
    "ICANS_RELOAD_INTERVAL_S",
    "OMP_NUM_THREADS",
)


def _local(argv: list[str]) -> list[str]:
    """The same command with this virtualenv's executable."""
    return [str(BIN / argv[0]), *argv[1:]]


# ---------------------------------------------------------------------------------------------
# PostgreSQL databases of this test


def _pg_admin():
    return pg_connect("postgres")


@pytest.fixture(scope="module")
def databases():
    """{'mlflow': url, 'service': url}: two fresh databases, dropped afterwards."""
    admin, user = _pg_admin()
    prefix = f"icans_scale_{secrets.token_hex(4)}"
    urls = {kind: f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{prefix}_{kind}" for kind in ("mlflow", "service")}
    try:
        # created by the same helper `make mlflow-server` uses
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).parents[2] / "deploy" / "ensure_database.py"), *urls.values()],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count(": created") == 2, proc.stdout
        yield urls
    finally:
        for kind in urls:
            admin.execute(f'DROP DATABASE IF EXISTS "{prefix}_{kind}" WITH (FORCE)')
        admin.close()


# ---------------------------------------------------------------------------------------------
# Processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 60) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- last lines of {self.name} ({self.log}) ---\n" + "\n".join(lines[-n:])

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the process group this test created (uvicorn workers included), then SIGKILL."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _start(name: str, argv: list[str], env: dict, cwd: Path, logs: Path) -> Proc:
    log = logs / f"{name}.log"
    fh = open(log, "wb")
    popen = subprocess.Popen(
        _local(argv), env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    fh.close()
    return Proc(name, popen, log)


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:  # MLflow's /health answers plain "OK"
        return {"text": raw[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"body": body}


def _get(url: str, timeout: float = 3.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, _json(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _wait_until(ok, proc: Proc, what: str, timeout_s: float) -> float:
    """Poll ok() until true; fail with the process log if it dies or the time runs out."""
    t0 = time.monotonic()
    while True:
        try:
            if ok():
                return time.monotonic() - t0
        except OSError:
            pass
        assert proc.popen.poll() is None, f"{proc.name} exited with {proc.popen.returncode}\n{proc.tail()}"
        assert time.monotonic() - t0 < timeout_s, f"{what} not within {timeout_s:.0f} s\n{proc.tail()}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, databases):
    """MLflow server on PostgreSQL with proxied artifacts; the environment of trainers and replicas."""
    root = tmp_path_factory.mktemp("scale")
    logs = root / "logs"
    logs.mkdir()
    artifacts = root / "server-artifacts"
    port = _free_port()
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    procs: list[Proc] = []
    server = _start(
        "mlflow-server",
        mlflow_server_argv(databases["mlflow"], str(artifacts), "127.0.0.1", port),
        server_env, root, logs,
    )
    procs.append(server)
    tracking = f"http://127.0.0.1:{port}"
    try:
        startup = _wait_until(lambda: _get(f"{tracking}/health")[0] == 200, server, "mlflow server /health", 180)
        icans_env = {
            **os.environ,
            "ICANS_ENV": "production",
            "MLFLOW_TRACKING_URI": tracking,
            # proxied artifacts: the experiment's location is mlflow-artifacts:/..., which every
            # client resolves against the tracking server (no artifact path of this host)
            "ICANS_ARTIFACT_ROOT": "mlflow-artifacts:/",
            "ICANS_STORE_URL": databases["service"],
            "ICANS_AUDIT_HMAC_KEY": secrets.token_hex(24),
            "ICANS_AUTH": "on",
            "ICANS_RELOAD_INTERVAL_S": str(RELOAD_INTERVAL_S),
            "OMP_NUM_THREADS": "1",
            # the promotion lock lives in the shared PostgreSQL database (an advisory lock), so it
            # spans hosts; production refuses to train without it
            "ICANS_LOCK_URL": databases["service"],
            "ICANS_DATA_DIR": str(root / "data"),
            "ICANS_N_ITER": "1",
            "ICANS_CV_FOLDS": "3",
            "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        }
        assert set(ICANS_ENV_KEYS) <= set(icans_env)
        yield {
            "root": root, "logs": logs, "artifacts": artifacts, "tracking": tracking,
            "env": icans_env, "server": server, "procs": procs,
            "timings": {"mlflow_server_startup_s": round(startup, 2)},
        }
    finally:
        for p in reversed(procs):
            p.stop()


def _client(tracking: str):
    """A client of the test's server, without touching mlflow's process-wide tracking URI."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking, registry_uri=tracking)


# ---------------------------------------------------------------------------------------------
# 1-2. Two trainings at the same time into one tracking server


@pytest.fixture(scope="module")
def trainings(cluster):
    """Start two `icans-risk train` processes at once; wait for both (bounded)."""
    env, root = cluster["env"], cluster["root"]
    workdir = root / "trainers"
    workdir.mkdir()
    started = {}
    procs = []
    for seed in TRAIN_SEEDS:
        # ungated (by the environment, so the command stays the deployment's, tests/e2e/test_deploy_files.py):
        # this test is about scale and concurrent promotion, not the gate; a 600-patient cohort's slope interval
        # may be too wide to judge, and the gate then rightly holds the model back (tests/model/test_gate.py)
        p = _start(f"train-seed{seed}", train_argv(TRAIN_N, seed), {**env, "ICANS_ALLOW_UNGATED": "1"}, workdir,
                   cluster["logs"])
        started[seed] = time.monotonic()
        procs.append((seed, p))
        cluster["procs"].append(p)
    walls, outputs = {}, {}
    deadline = time.monotonic() + 420
    for seed, p in procs:
        try:
            p.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"training seed {seed} not finished within the deadline\n{p.tail()}")
        walls[seed] = round(time.monotonic() - started[seed], 2)
        outputs[seed] = p.log.read_text(errors="replace")
        assert p.popen.returncode == 0, f"training seed {seed} exited {p.popen.returncode}\n{p.tail()}"
    cluster["timings"]["concurrent_training_wall_s"] = {f"seed{s}": w for s, w in walls.items()}
    cluster["timings"]["concurrent_trainings_total_s"] = round(
        max(started[s] + walls[s] for s in walls) - min(started.values()), 2
    )
    client = _client(cluster["tracking"])
    versions = sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'"))
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    return {"outputs": outputs, "workdir": workdir, "versions": versions, "champion": champion}


def test_concurrent_trainings_lose_no_run_and_leave_one_champion(cluster, trainings):
    client = _client(cluster["tracking"])
    exp = client.get_experiment_by_name(MODEL)
    assert exp is not None
    # proxied artifacts: nothing of the trainers' own file system is named in the experiment
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location

    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2, [(r.info.run_id, r.info.status) for r in parents]
    assert {r.info.status for r in parents} == {"FINISHED"}
    assert {r.data.params["seed"] for r in parents} == {str(s) for s in TRAIN_SEEDS}
    for r in parents:  # every write of each training arrived, up to its last ones
        assert "validated_auroc" in r.data.metrics and "train_seconds" in r.data.metrics, r.info.run_id
        assert r.data.tags.get("promoted") in ("true", "false"), r.data.tags
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    assert Counter(r.data.tags["mlflow.parentRunId"] for r in children) == {r.info.run_id: 3 for r in parents}

    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 2, [(v.version, v.run_id) for v in versions]
    assert {v.run_id for v in versions} == {r.info.run_id for r in parents}
    assert {v.status for v in versions} == {"READY"}

    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version in {v.version for v in versions}
    aliased = [v for v in versions if "champion" in (client.get_model_version(MODEL, v.version).aliases or [])]
    assert [v.version for v in aliased] == [champion.version]

    # The promotions were serialised: exactly one training found no champion; the other compared
    # itself with the first one's version under the lock. (A version refused by the trainer's
    # quality gate never competes; both refused would leave nothing to serve.)
    tags = {v.version: client.get_model_version(MODEL, v.version).tags for v in versions}
    # (trained ungated: the first one's reason carries the prefix "UNGATED (quality gate: ...; ALLOW_UNGATED=1): ")
    reasons = {ver: re.sub(r"^UNGATED \(quality gate: .*?; ALLOW_UNGATED=1\): ", "", t.get("promotion_reason", ""))
               for ver, t in tags.items()}
    competing = [ver for ver, why in reasons.items() if not why.startswith("quality gate")]
    assert competing, f"both versions refused by the quality gate, choose other TRAIN_SEEDS: {reasons}"
    first = [ver for ver in competing if reasons[ver] == "no champion yet"]
    assert len(first) == 1, reasons
    expected = first[0]
    if len(competing) == 2:
        (second,) = set(competing) - set(first)
        assert f"champion v{first[0]}" in reasons[second], reasons
        if tags[second]["promotion"] == "champion":
            expected = second
    assert champion.version == expected, (champion.version, reasons)
    assert {ver for ver, t in tags.items() if t["promotion"] == "champion"} <= set(competing)

    # the model files went through the server into --artifacts-destination
    stored = list(cluster["artifacts"].rglob("MLmodel"))
    assert len(stored) >= 2, stored
    assert not (trainings["workdir"] / "mlartifacts").exists()


# ---------------------------------------------------------------------------------------------
# 3-5. Two stateless replicas follow @champion under load


@dataclass
class Load:
    """Bounded background load: threads POST /v1/risk to their replica until stopped or timed out."""

    urls: dict[str, str]
    token: str
    threads_per_replica: int = 2
    max_seconds: float = 120.0
    pause_s: float = 0.02
    results: list[tuple] = field(default_factory=list)  # (replica, t_sent, t_done, status, version, error)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, replica: str, url: str, offset: int) -> None:
        body = dict(example_request())
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            i += 1
            body["age_years"] = 20 + (offset * 7 + i) % 60  # vary the patient a little
            req = urllib.request.Request(
                f"{url}/v1/risk",
                data=json.dumps(body).encode(),
                headers={"content-type": "application/json", "authorization": f"Bearer {self.token}"},
            )
            t_sent = time.monotonic()
            status, version, error = None, None, None
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status = r.status
                    version = json.loads(r.read())["model"]["version"]
            except urllib.error.HTTPError as exc:
                status, error = exc.code, exc.read()[:300].decode(errors="replace")
            except Exception as exc:  # connection refused or reset, timeout: a failed request
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.results.append((replica, t_sent, time.monotonic(), status, version, error))
            self._stop.wait(self.pause_s)

    def start(self) -> None:
        for replica, url in self.urls.items():
            for k in range(self.threads_per_replica):
                t = threading.Thread(target=self._run, args=(replica, url, k), daemon=True, name=f"load-{replica}-{k}")
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)
        assert not any(t.is_alive() for t in self._threads), "load threads did not stop"

    def snapshot(self) -> list[tuple]:
        with self._lock:
            return list(self.results)


def _wait_for(cond, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, f"{what} not within {timeout_s:.0f} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def _run_cli(argv: list[str], env: dict, cwd: Path) -> str:
    proc = run_group(_local(argv), env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_two_replicas_follow_the_champion_under_load(cluster, trainings, tmp_path, capsys):
    assert len(trainings["versions"]) == 2, trainings["versions"]
    env, root = cluster["env"], cluster["root"]
    created = _run_cli(keys_create_argv("scale-test-ehr"), env, root)
    token = created.strip().splitlines()[-1]
    assert token.startswith("icr_")

    ports = {"replica-a": _free_port(), "replica-b": _free_port()}
    replicas = {}
    t0 = time.monotonic()
    for name, port in ports.items():
        replicas[name] = _start(name, serve_argv("127.0.0.1", port), env, root, cluster["logs"])
        cluster["procs"].append(replicas[name])
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    initial = trainings["champion"]
    for name, url in urls.items():
        _wait_until(lambda url=url: _get(f"{url}/readyz")[0] == 200, replicas[name], f"{name} /readyz", 180)
    cluster["timings"]["replicas_ready_s"] = round(time.monotonic() - t0, 2)
    for url in urls.values():
        status, ready = _get(f"{url}/readyz")
        assert status == 200 and ready["model"]["version"] == initial, ready

    (target,) = set(trainings["versions"]) - {initial}
    load = Load(urls, token)
    load.start()
    switched_at: dict[str, float] = {}
    try:
        # load runs on the old champion first
        _wait_for(lambda: Counter(r[0] for r in load.snapshot() if r[3] == 200).keys() >= set(urls)
                  and len(load.snapshot()) >= 40, 60, "first answers of both replicas")
        time.sleep(1.0)
        client = _client(cluster["tracking"])
        t_switch = time.monotonic()
        client.set_registered_model_alias(MODEL, "champion", target)

        def seen_new(replica: str) -> bool:
            done = [r for r in load.snapshot() if r[0] == replica and r[4] == target]
            if done and replica not in switched_at:
                switched_at[replica] = min(r[2] for r in done) - t_switch
            return bool(done)

        _wait_for(lambda: all(seen_new(r) for r in urls), SWITCH_DEADLINE_S, f"both replicas answering with v{target}")
        time.sleep(2.0)  # keep the load on the new champion for a while
    finally:
        load.stop()

    results = load.snapshot()
    failed = [r for r in results if r[3] != 200]
    by_version = Counter(r[4] for r in results if r[3] == 200)
    timings = cluster["timings"]
    timings.update(
        {
            "reload_interval_s": RELOAD_INTERVAL_S,
            "switch_over_s": {r: round(s, 2) for r, s in sorted(switched_at.items())},
            "requests": len(results),
            "requests_failed": len(failed),
            "answers_by_version": dict(by_version),
            "versions": {"initial_champion": initial, "new_champion": target},
        }
    )
    out = tmp_path / "scale-timings.json"
    out.write_text(json.dumps(timings, indent=2))
    with capsys.disabled():
        print(f"\n[scale] timings ({out}):\n{json.dumps(timings, indent=2)}")

    assert not failed, failed[:5]
    assert set(by_version) <= set(trainings["versions"]), by_version
    assert by_version[initial] > 0 and by_version[target] > 0, by_version
    # once a replica answered with the new version, every request it received later did too
    for replica in urls:
        first_new_done = min(r[2] for r in results if r[0] == replica and r[4] == target)
        late_old = [r for r in results if r[0] == replica and r[1] > first_new_done and r[4] != target]
        assert not late_old, (replica, late_old[:3])
    for name, url in urls.items():
        status, ready = _get(f"{url}/readyz")
        assert status == 200 and ready["model"]["version"] == target, (name, ready)
        assert replicas[name].popen.poll() is None, replicas[name].tail()

    # every answer that left a replica is in the shared audit trail, with the version it carried
    count = int(_run_cli(["icans-risk", "audit", "count"], env, root).strip())
    assert count == len(results), (count, len(results))
    import sqlalchemy as sa

    engine = sa.create_engine(env["ICANS_STORE_URL"], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            audited = dict(conn.execute(sa.text("SELECT model_version, count(*) FROM audit_log GROUP BY 1")).all())
    finally:
        engine.dispose()
    assert {v: int(n) for v, n in audited.items()} == dict(by_version)
