"""deploy/ cannot run here (no container engine), so it is checked instead, offline:

- docker-compose.yml against the Compose Specification JSON schema (vendored by check-jsonschema);
- every Kubernetes manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict);
- the structure that matters: probes on /readyz and /healthz, two or more replicas, the proxy in
  front of every replica, the production environment, and commands identical to the ones
  tests/e2e/test_scale.py runs against a real MLflow server and real replicas.

Each validator is also shown a broken file, so a validator that silently accepts everything
fails here too.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
NGINX = DEPLOY / "nginx" / "nginx.conf"
BIN = Path(sys.executable).parent
K8S_VERSIONS = ("1.29.0", "1.37.0")  # the oldest still in common managed use, and the newest known


def _scale_module():
    """tests/e2e/test_scale.py, loaded by path: the single definition of the production commands."""
    spec = importlib.util.spec_from_file_location("_icans_scale_commands", Path(__file__).with_name("test_scale.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


scale = _scale_module()

# The commands test_scale.py runs, with placeholder values: only their shape must match.
EXPECTED = {
    "mlflow-server": scale.mlflow_server_argv("<backend>", "<artifacts>", "<host>", 1),
    "serve": scale.serve_argv("<host>", 1),
    "train": scale.train_argv(1, 1),
    "keys-create": scale.keys_create_argv("<client>"),
    # issue 27: the Dask cluster (deploy/k8s/dask.yaml, the compose profile "cluster")
    "dask-scheduler": ["dask", "scheduler", "--port", "8786", "--dashboard-address", ":8787"],
    "dask-worker": ["dask", "worker", "tcp://dask-scheduler:8786", "--nthreads", "1", "--nworkers", "2"],
}
# Flags whose value must also be the same (the rest are per deployment: URLs, ports, sizes).
FIXED_VALUES = {"--workers", "--scope"}


def shape(argv: list[str]) -> list[str]:
    """Executable name, subcommand words and flags as they are; values as <value> unless fixed."""
    out: list[str] = []
    words = True
    for i, token in enumerate(argv):
        if i == 0:
            out.append(Path(token).name)
        elif token.startswith("--"):
            words = False
            out.append(token)
        elif words:
            out.append(token)
        else:
            out.append(token if argv[i - 1] in FIXED_VALUES else "<value>")
    return out


def test_shape_tells_values_from_flags():
    assert shape(["/app/.venv/bin/icans-risk", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]) == [
        "icans-risk", "serve", "--host", "<value>", "--port", "<value>", "--workers", "1",
    ]
    assert shape(EXPECTED["mlflow-server"]).count("<value>") == 4


def kind_of(argv: object) -> str | None:
    if not isinstance(argv, list) or not argv:
        return None
    for kind, expected in EXPECTED.items():
        n_words = next(i for i, t in enumerate(expected) if t.startswith("--"))
        if [Path(argv[0]).name, *argv[1:n_words]] == [expected[0], *expected[1:n_words]]:
            return kind
    return None


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    assert docs, f"no manifests in {K8S}"
    return docs


def _find(manifests, kind: str, name: str) -> dict:
    found = [d for _, d in manifests if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container_argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


# ---------------------------------------------------------------------------------------------
# Schemas


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    exe = BIN / "check-jsonschema"
    assert exe.exists(), "check-jsonschema is a dev dependency: make install"
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


def test_compose_file_follows_the_compose_specification():
    proc = _check_jsonschema(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  api:\n    image: x\n    healthcheck:\n      test: [CMD, true]\n      intervall: 5s\n"
    )
    proc = _check_jsonschema(broken)
    assert proc.returncode != 0 and "intervall" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_follow_the_kubernetes_schemas(manifests, version):
    import kubernetes_validate

    for path, doc in manifests:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} (k8s {version}): "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{path.name}: no schema: {exc.message}")


def test_kubernetes_validation_rejects_a_broken_manifest(manifests):
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(_find(manifests, "Deployment", "icans-risk"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["pathh"] = probe["httpGet"].pop("path")  # a typo strict validation must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(_find(manifests, "Deployment", "icans-risk"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=False)


# ---------------------------------------------------------------------------------------------
# Compose: structure


def _replicas(compose: dict) -> dict[str, dict]:
    return {
        name: svc for name, svc in compose["services"].items()
        if kind_of(svc.get("command", [])) == "serve"
    }


def test_compose_commands_are_the_integration_test_commands(compose):
    kinds: dict[str, list[str]] = {}
    for name, svc in compose["services"].items():
        command = svc.get("command")
        if not isinstance(command, list) or not command:
            continue
        kind = kind_of(command)
        if kind is None:
            continue
        assert shape(command) == shape(EXPECTED[kind]), (name, command)
        kinds.setdefault(kind, []).append(name)
    assert set(kinds) >= {"mlflow-server", "serve", "train"}, kinds
    assert len(kinds["mlflow-server"]) == 1


def test_compose_runs_two_or_more_replicas_with_readyz_healthchecks(compose):
    replicas = _replicas(compose)
    assert len(replicas) >= 2, sorted(replicas)
    for name, svc in replicas.items():
        test = " ".join(svc["healthcheck"]["test"])
        port = svc["command"][svc["command"].index("--port") + 1]
        assert f"127.0.0.1:{port}/readyz" in test, (name, test)
        assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy", name
        assert "ports" not in svc, f"{name}: replicas are reached through the proxy only"
    mlflow = compose["services"]["mlflow"]
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(compose["services"]["postgres"]["healthcheck"]["test"])


def test_compose_production_environment(compose):
    mlflow = compose["services"]["mlflow"]
    argv = mlflow["command"]
    assert argv[argv.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://")
    mlflow_port = argv[argv.index("--port") + 1]
    assert set(scale.MLFLOW_SERVER_ENV_KEYS) <= set(mlflow["environment"])
    assert "mlflow" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name, svc in {**_replicas(compose), "train": compose["services"]["train"]}.items():
        env = svc["environment"]
        assert set(scale.ICANS_ENV_KEYS) - {"ICANS_STORE_URL"} <= set(env), (name, sorted(env))
        assert env["ICANS_ENV"] == "production"
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
        assert env["ICANS_ARTIFACT_ROOT"] == "mlflow-artifacts:/"  # what test_scale.py runs with
        assert env["ICANS_AUTH"] == "on"
        assert float(env["ICANS_RELOAD_INTERVAL_S"]) > 0
    for name, svc in _replicas(compose).items():
        assert svc["environment"]["ICANS_STORE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in svc["environment"]["ICANS_STORE_URL"]
    text = COMPOSE.read_text()
    assert "change-me" not in text, "no secret values in the compose file"
    assert "${ICANS_AUDIT_HMAC_KEY:?" in text and "${POSTGRES_PASSWORD:?" in text


def test_the_proxy_fronts_every_replica(compose):
    proxy = compose["services"]["proxy"]
    assert any(v.startswith("./nginx/nginx.conf:") for v in proxy["volumes"])
    conf = NGINX.read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream, "no upstream block"
    servers = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", upstream.group(2), re.M))
    expected = {f"{name}:{svc['command'][svc['command'].index('--port') + 1]}" for name, svc in _replicas(compose).items()}
    assert servers == expected
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    listen = re.search(r"listen\s+(\d+);", conf).group(1)
    assert any(str(p).endswith(f":{listen}") for p in proxy["ports"])
    assert all(str(p).startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", []))
    for name in _replicas(compose):
        assert proxy["depends_on"][name]["condition"] == "service_healthy"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (optional syntax check)")
def test_nginx_config_syntax(tmp_path):
    """`nginx -t` on the config with the replicas' compose names replaced by 127.0.0.1."""
    conf = re.sub(r"server\s+[\w-]+:(\d+)", r"server 127.0.0.1:\1", NGINX.read_text())
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    proc = subprocess.run(
        [shutil.which("nginx"), "-t", "-q", "-p", str(tmp_path), "-c", str(path), "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_postgres_init_creates_the_service_database(compose):
    init = (DEPLOY / "postgres" / "init.sql").read_text()
    pg_env = compose["services"]["postgres"]["environment"]
    store = _replicas(compose)["icans-a"]["environment"]["ICANS_STORE_URL"]
    backend = compose["services"]["mlflow"]["command"]
    backend = backend[backend.index("--backend-store-uri") + 1]
    assert backend.rsplit("/", 1)[1] == pg_env["POSTGRES_DB"]
    assert f"CREATE DATABASE {store.rsplit('/', 1)[1]}" in init


# ---------------------------------------------------------------------------------------------
# Kubernetes: structure


def test_kubernetes_commands_are_the_integration_test_commands(manifests):
    seen = set()
    for path, doc in manifests:
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        for container in (pod or {}).get("containers", []):
            argv = _container_argv(container)
            kind = kind_of(argv)
            assert kind is not None, f"{path.name}: {container['name']} runs an unknown command {argv}"
            assert shape(argv) == shape(EXPECTED[kind]), (path.name, argv)
            seen.add(kind)
    assert seen >= {"mlflow-server", "serve", "train"}, seen


def test_kubernetes_service_deployment(manifests):
    dep = _find(manifests, "Deployment", "icans-risk")
    assert dep["spec"]["replicas"] >= 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    argv = _container_argv(container)
    port = int(argv[argv.index("--port") + 1])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        target = container[probe]["httpGet"]["port"]
        assert named.get(target, target) == port, probe

    config = _find(manifests, "ConfigMap", "icans-risk-config")["data"]
    env_names = set(config) | {e["name"] for e in container.get("env", [])}
    assert [r["configMapRef"]["name"] for r in container["envFrom"]] == ["icans-risk-config"]
    assert set(scale.ICANS_ENV_KEYS) <= env_names, sorted(set(scale.ICANS_ENV_KEYS) - env_names)
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {"ICANS_STORE_URL", "ICANS_AUDIT_HMAC_KEY"} <= set(secrets)
    assert config["ICANS_ENV"] == "production" and config["ICANS_AUTH"] == "on"
    assert config["ICANS_ARTIFACT_ROOT"] == "mlflow-artifacts:/"
    assert float(config["ICANS_RELOAD_INTERVAL_S"]) > 0

    svc = _find(manifests, "Service", "icans-risk")
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert all(named.get(p["targetPort"], p["targetPort"]) == port for p in svc["spec"]["ports"])
    pdb = _find(manifests, "PodDisruptionBudget", "icans-risk")
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def test_kubernetes_mlflow_server(manifests):
    dep = _find(manifests, "Deployment", "mlflow")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    argv = _container_argv(container)
    port = int(argv[argv.index("--port") + 1])
    env = {e["name"]: e for e in container["env"]}
    # the backend store URL (with its password) comes from the Secret, expanded by the kubelet
    assert argv[argv.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "icans-risk-secrets"
    assert set(scale.MLFLOW_SERVER_ENV_KEYS) <= set(env)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert argv[argv.index("--artifacts-destination") + 1] in mounts
    svc = _find(manifests, "Service", "mlflow")
    config = _find(manifests, "ConfigMap", "icans-risk-config")["data"]
    assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow:{svc['spec']['ports'][0]['port']}"
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port)


def test_kubernetes_namespaces_and_no_inline_secrets(manifests):
    for path, doc in manifests:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "icans-risk", path.name
        assert doc["kind"] != "Secret", f"{path.name}: secrets are created with kubectl, never committed"


def test_training_cronjob_never_overlaps(manifests):
    cron = _find(manifests, "CronJob", "icans-risk-train")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


# ---------------------------------------------------------------------------------------------
# Documentation and make


def test_deploy_readme_gives_the_commands():
    text = (DEPLOY / "README.md").read_text()
    for needle in (
        "docker compose -f deploy/docker-compose.yml up -d --build --wait mlflow",
        "--profile train run --rm train",
        "kubectl apply -f deploy/k8s/",
        "make mlflow-server",
        "tests/e2e/test_scale.py",
    ):
        assert needle in text, needle
    keys = [k.split("#")[0] for k in re.findall(r"icans-risk keys create [^\n`]*", text)]
    assert keys and all(shape(k.split()) == shape(EXPECTED["keys-create"]) for k in keys), keys


def test_make_mlflow_server_runs_the_same_server():
    """`make mlflow-server` (the Makefile) starts the server with the same flags as everything else."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^mlflow-server:.*\n((?:\t.*\n?)+)", makefile, re.M)
    assert recipe, "the Makefile has no mlflow-server target"
    text = recipe.group(1).replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "mlflow server" in ln or "/mlflow server" in ln)
    tokens = line.split()
    start = next(i for i, t in enumerate(tokens) if t.endswith("mlflow") and tokens[i + 1] == "server")
    flags = [t for t in tokens[start:] if t.startswith("--")]
    assert flags == [t for t in EXPECTED["mlflow-server"] if t.startswith("--")], flags
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in text
    assert "deploy/ensure_database.py" in text
