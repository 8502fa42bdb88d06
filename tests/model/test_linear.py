"""The logistic family served: its explanation adds up exactly and equals shap's, its bootstrap models
equal each refitted pipeline, a bundle of it survives saving, and the family choice can pick it."""

from __future__ import annotations

import numpy as np
import pytest

from core.features import GROUP, encode_frame
from models.artifact import ModelBundle
from models.candidates import make_logistic
from models.linear import LinearEnsemble, LinearTerms
from pipeline.data.synthetic import generate_cohort
from pipeline.train.validation import fit_procedure


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    df = generate_cohort(800, 11)
    X = np.asarray(encode_frame(df), dtype=np.float64)
    rng = np.random.default_rng(5)
    X[rng.random(X.shape) < 0.08] = np.nan  # missing values: the indicators and the imputed medians act
    return X, df["severe_icans"].to_numpy().astype(int)


def test_terms_add_up_to_the_pipelines_own_margin(data):
    X, y = data
    pipe = make_logistic(0).set_params(model__C=0.3).fit(X, y)
    phi, bias = LinearTerms.from_pipeline(pipe).contributions(X)
    assert np.max(np.abs(bias + phi.sum(axis=1) - pipe.decision_function(X))) < 1e-10


def test_contributions_equal_shaps_linear_explainer(data):
    """shap's LinearExplainer (interventional, the development patients as background) on the
    transformed columns, each indicator's value added to its own matrix column, gives ours."""
    import shap

    X, y = data
    pipe = make_logistic(0).fit(X, y)
    Z = pipe[:-1].transform(X)  # imputed, logged, standardised, indicators appended
    explainer = shap.LinearExplainer(pipe.named_steps["model"], shap.maskers.Independent(Z, max_samples=len(Z)))
    sv = np.asarray(explainer.shap_values(Z[:50]))
    m = X.shape[1]
    theirs = sv[:, :m].copy()
    for k, j in enumerate(pipe.named_steps["impute"].indicator_.features_):
        theirs[:, j] += sv[:, m + k]
    ours, bias = LinearTerms.from_pipeline(pipe).contributions(X[:50])
    assert np.max(np.abs(ours - theirs)) < 1e-8
    assert abs(float(np.ravel(explainer.expected_value)[0]) - bias[0]) < 1e-8


def test_ensemble_equals_every_refitted_pipeline_with_its_calibration(data):
    X, y = data
    rng = np.random.default_rng(1)
    pipes, a, s = [], rng.normal(0, 0.2, 6), rng.uniform(0.7, 1.3, 6)
    for _ in range(6):
        idx = rng.integers(0, len(y), len(y))
        pipes.append(make_logistic(0).fit(X[idx], y[idx]))
    ens = LinearEnsemble.build([LinearTerms.from_pipeline(p) for p in pipes], a, s)
    expected = np.column_stack([a[b] + s[b] * p.decision_function(X) for b, p in enumerate(pipes)])
    assert np.max(np.abs(ens.margins(X) - expected)) < 1e-10
    lo, hi, change = ens.summary(X[:20], expected[:20, 0], -1.5, -0.5)
    risks = 1 / (1 + np.exp(-expected[:20]))
    assert np.allclose(lo, np.percentile(risks, 2.5, axis=1)) and np.allclose(hi, np.percentile(risks, 97.5, axis=1))
    assert (change >= 0).all() and (change <= 1).all()


def test_a_logistic_bundle_answers_identically_after_saving(data, tmp_path):
    X, y = data
    pipe = make_logistic(0).fit(X, y)
    terms = [LinearTerms.from_pipeline(make_logistic(0).fit(X[i], y[i]))
             for i in (np.random.default_rng(b).integers(0, len(y), len(y)) for b in range(5))]
    bundle = ModelBundle(kind="logistic", estimator=pipe, calibration_intercept=0.1, calibration_slope=0.9,
                         low_threshold=0.1, high_threshold=0.3, outcome="severe_icans",
                         instability=LinearEnsemble.build(terms, [0.1] * 5, [0.9] * 5))
    loaded = ModelBundle.load(bundle.save(tmp_path / "b"))
    before, after = bundle.explain(X[:40]), loaded.explain(X[:40])
    assert np.array_equal(before.log_odds, after.log_odds)
    assert np.max(np.abs(after.base + after.contributions.sum(axis=1) - after.log_odds)) < 1e-12
    assert after.contributions.shape == (40, GROUP.shape[1])
    assert np.allclose(loaded.predict_proba(X[:40]), after.risk, atol=1e-12)  # the library's margin agrees
    assert isinstance(loaded.instability, LinearEnsemble)
    lo, hi, _ = loaded.uncertainty(X[:40], after.log_odds)
    assert (lo <= hi).all()


def test_the_family_choice_includes_the_logistic_family(data):
    """Every family on the same out-of-fold criterion: the lowest CV log-loss wins, logistic included
    (it was once left out, so a default training chose a tree model the gate then refused as
    clearly worse than the logistic comparator)."""
    X, y = data
    tuned = {
        "xgboost": {"params": {"n_estimators": 20, "max_depth": 2}, "cv_log_loss": 0.50},
        "hist_gradient_boosting": {"params": {"max_iter": 20, "max_depth": 2}, "cv_log_loss": 0.49},
        "logistic": {"params": {"model__C": 0.1}, "cv_log_loss": 0.48},
    }
    assert fit_procedure(X, y, tuned, 3, 0, 1).chosen == "logistic"
    tuned["xgboost"]["cv_log_loss"] = 0.40
    assert fit_procedure(X, y, tuned, 3, 0, 1).chosen == "xgboost"


def test_a_served_logistic_champion_answers_with_an_explanation_that_adds_up(tmp_path):
    """The whole path for the logistic family: a training restricted to it registers and serves it,
    and /v1/risk's answer adds up (base + contributions = log-odds), with its bootstrap interval."""
    from fastapi.testclient import TestClient

    from pipeline.train.run import train
    from serving.app import create_app
    from tests.helpers import make_settings, random_records

    settings = make_settings(tmp_path, families=["logistic"], auth="off", default_cohort_size=800)
    result = train(settings)
    assert result.chosen == "logistic" and result.promoted
    with TestClient(create_app(settings)) as client:
        from tests.helpers import wait_ready

        wait_ready(client)
        for record in random_records(5, seed=3):
            r = client.post("/v1/risk", json=record)
            assert r.status_code == 200, r.text
            body = r.json()
            total = body["explanation"]["base_log_odds"] + sum(c["log_odds"] for c in body["explanation"]["contributions"])
            assert abs(total - body["log_odds"]) < 1e-9
            low, high = body["uncertainty"]["interval"]
            assert 0 < low <= high < 1 and body["uncertainty"]["bootstrap_models"] == 20


def test_an_unknown_family_is_refused_by_name_of_the_setting():
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError, match="ICANS_FAMILIES must name only xgboost, hist_gradient_boosting, logistic"):
        Settings(families=["random_forest"])
    with pytest.raises(ValidationError):
        Settings(families=[])


def test_the_direction_table_of_a_logistic_model_says_nothing_is_enforced():
    """A logistic model takes no monotone constraint: the published direction is shown as not enforced."""
    import pandas as pd

    from pipeline.report.sections import direction_blocks

    rows = pd.DataFrame([{"feature": "crp_mg_l", "low": 2.0, "high": 22.0, "risk_low": 0.1, "risk_high": 0.2,
                          "effect": 0.1, "model_direction": "raises risk", "published_direction": "raises risk",
                          "enforced": False, "contradiction": False, "unconstrained_direction": "raises risk",
                          "constraint_against_data": False, "note": ""}])
    ev = type("Ev", (), {"directions": rows})()
    table = next(b for b in direction_blocks(ev) if b[0] == "table")
    assert table[2][0][-2] == "raises risk (not enforced)"
    rows["enforced"] = True
    table = next(b for b in direction_blocks(ev) if b[0] == "table")
    assert table[2][0][-2] == "raises risk"
