"""Loading a bundle for serving: the trees from xgboost's JSON without xgboost, the registry without
mlflow, and the same answers as the library's own Booster (old `model.ubj` bundles included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.features import N_MATRIX, encode_record
from tests.helpers import edge_records, random_records

ROOT = Path(__file__).resolve().parents[2]


def _matrix(records):
    X = np.empty((len(records), N_MATRIX))
    for i, r in enumerate(records):
        encode_record(r, X[i])
    return X


@pytest.fixture(scope="module")
def X():
    return _matrix(random_records(400, seed=21) + edge_records())


@pytest.fixture(scope="module")
def xgb_bundle(bundle):
    """The trained champion when it is an xgboost model; otherwise the champion's calibration and
    thresholds around an xgboost model fitted here (these tests are about xgboost's files, whatever
    family the session's training chose)."""
    if bundle.kind == "xgboost":
        return bundle
    import dataclasses

    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame
    from models.candidates import make_xgboost

    df = generate_cohort(600, 5)
    model = make_xgboost(0).set_params(n_estimators=60, max_depth=3).fit(encode_frame(df), df["severe_icans"])
    return dataclasses.replace(bundle, kind="xgboost", estimator=model.get_booster(), instability=None,
                               _explainer=None, _trees=None, _estimator_raw=None)


@pytest.fixture(scope="module")
def saved(xgb_bundle, tmp_path_factory) -> Path:
    """An xgboost bundle, saved by this code."""
    return xgb_bundle.save(tmp_path_factory.mktemp("bundles") / "json")


@pytest.fixture(scope="module")
def ubj(saved, tmp_path_factory) -> Path:
    """The same bundle as an older version of this code saved it: the booster as model.ubj."""
    import xgboost as xgb

    path = tmp_path_factory.mktemp("bundles") / "ubj"
    path.mkdir()
    booster = xgb.Booster()
    booster.load_model(str(saved / "model.json"))
    booster.save_model(str(path / "model.ubj"))
    meta = json.loads((saved / "bundle.json").read_text())
    meta["estimator_file"] = "model.ubj"
    meta.pop("parts")  # older code declared no parts (and kept no ensemble beside model.ubj)
    meta["metadata"].pop("instability", None)
    (path / "bundle.json").write_text(json.dumps(meta, indent=2))
    return path


def _run(code: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_new_bundles_keep_the_booster_as_xgboost_json(saved):
    meta = json.loads((saved / "bundle.json").read_text())
    assert meta["estimator_file"] == "model.json"
    assert not (saved / "model.ubj").exists()
    assert json.loads((saved / "model.json").read_bytes())["learner"]["objective"]["name"] == "binary:logistic"


def test_a_bundle_loads_and_explains_without_importing_xgboost(saved, X, tmp_path):
    np.save(tmp_path / "X.npy", X)
    code = """
import json, sys
import numpy as np
from models.artifact import ModelBundle
b = ModelBundle.load(sys.argv[1])
ex = b.explain(np.load(sys.argv[2]))
margin = b.explainer.margin(np.load(sys.argv[2]))
print(json.dumps({"xgboost": "xgboost" in sys.modules, "sklearn": "sklearn" in sys.modules,
                  "mlflow": "mlflow" in sys.modules, "loaded": b.estimator_loaded,
                  "log_odds": ex.log_odds.tolist(), "margin": margin.tolist()}))
"""
    got = _run(code, str(saved), str(tmp_path / "X.npy"))
    assert not got["xgboost"] and not got["sklearn"] and not got["mlflow"]
    assert not got["loaded"]
    from models.artifact import ModelBundle

    reference = ModelBundle.load(saved)
    reference.estimator  # noqa: B018 - the real Booster
    np.testing.assert_array_equal(np.array(got["log_odds"]), reference.explain(X).log_odds)
    np.testing.assert_allclose(np.array(got["margin"]), reference.explainer.margin(X), atol=1e-6, rtol=0)


def test_margin_from_the_trees_equals_the_boosters(saved, X):
    from models.artifact import ModelBundle

    lazy = ModelBundle.load(saved)
    tree_margin = lazy.explainer.margin(X)  # no booster attached yet: walks the trees
    assert not lazy.estimator_loaded
    booster = lazy.estimator
    assert lazy.estimator_loaded
    library = booster.inplace_predict(np.asarray(X, dtype=np.float32), predict_type="margin", missing=np.nan)
    np.testing.assert_allclose(tree_margin, library, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(lazy.explainer.margin(X), library.astype(np.float64))  # now the library's own
    # and the explanation adds up to it
    np.testing.assert_allclose(lazy.explain(X).raw_margin, library, atol=1e-5, rtol=0)


def test_old_ubj_bundles_still_load_with_the_same_answers(saved, ubj, X):
    from models.artifact import ModelBundle

    old, new = ModelBundle.load(ubj, nthread=2), ModelBundle.load(saved, nthread=2)
    assert old.estimator_loaded and not new.estimator_loaded
    for a, b in zip(
        (old.explain(X).log_odds, old.explain(X).contributions, old.predict_proba(X)),
        (new.explain(X).log_odds, new.explain(X).contributions, new.predict_proba(X)),
    ):
        np.testing.assert_array_equal(a, b)
    assert new.estimator_loaded  # predict_proba asked the library
    assert json.loads(new.estimator.save_config())["learner"]["generic_param"]["nthread"] == "2"


def test_predict_proba_is_the_boosters_and_unchanged_by_lazy_loading(xgb_bundle, saved, X):
    from models.artifact import ModelBundle

    lazy = ModelBundle.load(saved)
    np.testing.assert_array_equal(lazy.predict_proba(X), xgb_bundle.predict_proba(X))
    np.testing.assert_array_equal(lazy.explain(X).log_odds, xgb_bundle.explain(X).log_odds)


def test_resaving_a_lazily_loaded_bundle_keeps_the_model_byte_for_byte(saved, ubj, tmp_path):
    from models.artifact import ModelBundle

    lazy = ModelBundle.load(saved)
    again = lazy.save(tmp_path / "again")
    assert not lazy.estimator_loaded
    assert (again / "model.json").read_bytes() == (saved / "model.json").read_bytes()
    converted = ModelBundle.load(ubj).save(tmp_path / "converted")  # an old bundle saves as JSON
    assert (converted / "model.json").is_file()
    X1 = _matrix(random_records(20, seed=4))
    np.testing.assert_array_equal(ModelBundle.load(converted).explain(X1).log_odds, lazy.explain(X1).log_odds)


def test_explainer_from_trees_alone_for_scikit_learn():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from models.explain import TreeExplainer, tree_margin
    from models.treeshap import from_hist_gradient_boosting

    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(600, 5))
    Xs[rng.random(Xs.shape) < 0.1] = np.nan
    y = (np.nan_to_num(Xs[:, 0]) + rng.normal(size=600) > 0).astype(int)
    est = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(Xs, y)
    explainer = TreeExplainer.from_trees("hist_gradient_boosting", from_hist_gradient_boosting(est))
    assert explainer.estimator is None
    np.testing.assert_allclose(explainer.margin(Xs), est.decision_function(Xs), atol=1e-9, rtol=0)
    np.testing.assert_allclose(tree_margin(explainer.trees, Xs, chunk=7), est.decision_function(Xs), atol=1e-9)
    phi, bias = explainer.contributions(Xs)
    np.testing.assert_allclose(bias + phi.sum(axis=1), est.decision_function(Xs), atol=1e-9)
    with pytest.raises(ValueError):
        TreeExplainer("xgboost")


# -- the registry without mlflow ---------------------------------------------------------------------


def test_direct_resolution_is_mlflows_answer(trained):
    from mlflow import MlflowClient

    import mlflow
    from models.registry import resolve, resolve_direct

    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    for uri in (settings.resolved_model_uri, f"models:/{result.model_name}/{result.version}"):
        direct, reference = resolve_direct(settings.tracking_uri, uri), resolve(client, uri)
        assert direct == reference
        assert direct.location is not None and (direct.location / "artifacts" / "bundle" / "bundle.json").is_file()
    # anything it cannot answer for certain is left to mlflow
    assert resolve_direct(settings.tracking_uri, f"models:/{result.model_name}@no-such-alias") is None
    assert resolve_direct(settings.tracking_uri, f"models:/{result.model_name}/999") is None
    assert resolve_direct(settings.tracking_uri, f"models:/{result.model_name}@latest") is None
    assert resolve_direct("http://127.0.0.1:9/", settings.resolved_model_uri) is None
    assert resolve_direct(settings.tracking_uri + ".missing", settings.resolved_model_uri) is None


def test_direct_resolution_knows_the_pinned_mlflow_schema_and_leaves_others_to_mlflow(trained, tmp_path):
    """The direct read bypasses mlflow's schema check: it must only ever read the schema it was
    written for, and a database at another revision must go through mlflow (which refuses it)."""
    import shutil
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    from models.registry import MLFLOW_SCHEMA_HEAD, resolve_direct

    assert MLFLOW_SCHEMA_HEAD == _get_latest_schema_revision()
    settings, _ = trained
    copy = tmp_path / "older.db"
    shutil.copy(settings.tracking_uri.removeprefix("sqlite:///"), copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'an-older-revision'")
    assert resolve_direct(f"sqlite:///{copy}", settings.resolved_model_uri) is None
    assert resolve_direct(settings.tracking_uri, settings.resolved_model_uri) is not None


def test_direct_resolution_leaves_workspaces_to_mlflow(trained, monkeypatch):
    from models.registry import resolve_direct

    settings, _ = trained
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert resolve_direct(settings.tracking_uri, settings.resolved_model_uri) is None


def test_the_service_loader_imports_neither_mlflow_nor_xgboost(trained):
    settings, result = trained
    code = """
import json, sys
from types import SimpleNamespace
from serving.state import load_predictor
s = SimpleNamespace(tracking_uri=sys.argv[1], resolved_model_uri=sys.argv[2], predictor_threads=1)
p = load_predictor(s)  # resolves, loads and verifies
print(json.dumps({"version": p.model.version, "mlflow": "mlflow" in sys.modules, "xgboost": "xgboost" in sys.modules,
                  "numba": "numba" in sys.modules, "tables": p.bundle.explainer.tables is not None,
                  "treeshap": "models.treeshap" in sys.modules,
                  "instability": None if p.bundle.instability is None else p.bundle.instability.n_models}))
"""
    got = _run(code, settings.tracking_uri, settings.resolved_model_uri)
    assert got["version"] == str(result.version)
    assert not got["mlflow"]
    # leaf tables explain it: the compiled TreeSHAP walk is not loaded; numba is, for the kernels of the
    # uncertainty interval (models.ensemble_kernels), and only for them
    assert got["tables"] and not got["treeshap"]
    assert got["numba"] == (got["instability"] is not None)
    if result.chosen == "xgboost":
        assert not got["xgboost"]


def test_direct_resolution_on_a_postgresql_registry(saved, tmp_path):
    """The production database of the embedded profile: same answers as mlflow, deleted versions left out."""
    import secrets
    import shutil

    from mlflow import MlflowClient

    from models.artifact import ModelBundle
    from models.registry import load_bundle, resolve, resolve_direct
    from tests.helpers import PG_HOST, PG_PORT, pg_connect

    admin, user = pg_connect()
    name = f"icans_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        uri = f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("m")
        versions = []
        for i in range(2):
            source = tmp_path / f"v{i}"
            shutil.copytree(saved, source / "artifacts" / "bundle")
            versions.append(client.create_model_version("m", str(source)).version)
        client.set_registered_model_alias("m", "champion", versions[0])
        for model_uri in ("models:/m@champion", f"models:/m/{versions[1]}"):
            direct = resolve_direct(uri, model_uri)
            assert direct is not None and direct == resolve(client, model_uri)
        assert resolve_direct(uri, "models:/m@champion").location == tmp_path / "v0"
        X1 = _matrix(random_records(5, seed=9))
        np.testing.assert_array_equal(
            load_bundle(resolve_direct(uri, "models:/m@champion")).explain(X1).log_odds,
            ModelBundle.load(saved).explain(X1).log_odds,
        )
        client.delete_model_version("m", versions[1])
        assert resolve_direct(uri, f"models:/m/{versions[1]}") is None  # mlflow then says it does not exist
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
