"""The instability analysis: bootstrap refits of the shipped procedure, and what is reported from them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.train import instability
from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame
from pipeline.train.validation import fit_procedure

PARAMS = {"n_estimators": 30, "max_depth": 2, "learning_rate": 0.1}


@pytest.fixture(scope="module")
def cohort():
    df = generate_cohort(220, seed=11)
    return encode_frame(df), df["severe_icans"].to_numpy(int)


def test_replicates_are_the_procedure_on_a_resample_and_reproducible(cohort) -> None:
    X, y = cohort
    a, _ = instability.bootstrap_ensemble("xgboost", PARAMS, X, y, 6, 3, seed=5, n_jobs=1)
    b, _ = instability.bootstrap_ensemble("xgboost", PARAMS, X, y, 6, 3, seed=5, n_jobs=2)
    np.testing.assert_array_equal(a.margins(X), b.margins(X))  # the same seed, any number of workers
    c, _ = instability.bootstrap_ensemble("xgboost", PARAMS, X, y, 6, 3, seed=6, n_jobs=1)
    assert not np.allclose(a.margins(X), c.margins(X))
    # replicate 0 is the chosen configuration refitted (tuned parameters, Platt on out-of-fold margins, fit) on its resample
    rng = np.random.default_rng([5, 0])
    idx = rng.integers(0, len(y), len(y))
    fitted = fit_procedure(X[idx], y[idx], {"xgboost": {"params": PARAMS, "cv_log_loss": 0.0}}, 3, 5, 1)
    want = fitted.predict(X)
    got = 1 / (1 + np.exp(-a.margins(X)[:, 0]))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_sample_without_enough_events_is_drawn_again(cohort) -> None:
    X, y = cohort
    rare = np.zeros_like(y)
    rare[:4] = 1  # 4 events: many resamples hold fewer than 3
    ens, redraws = instability.bootstrap_ensemble("xgboost", PARAMS, X, rare, 10, 3, seed=1, n_jobs=1)
    assert ens.n_models == 10 and redraws > 0


def test_summary_figures_are_those_of_the_bootstrap_risks(cohort) -> None:
    X, y = cohort
    ens, _ = instability.bootstrap_ensemble("xgboost", PARAMS, X, y, 8, 3, seed=2, n_jobs=1)
    final = np.log(0.2 / 0.8) + np.linspace(-1, 1, len(y))
    low, high = 0.15, 0.3
    inst = instability.summarise(ens, X, final, low, high, len(y))
    p = 1 / (1 + np.exp(-ens.margins(X)))
    p0 = 1 / (1 + np.exp(-final))
    s = inst.summary
    assert s["models"] == 8 and s["n_dev"] == len(y)
    assert s["mape"] == pytest.approx(np.mean(np.abs(p - p0[:, None])))
    lo, hi = np.percentile(p, [2.5, 97.5], axis=1)
    assert s["median_interval_width"] == pytest.approx(np.median(hi - lo))
    g = lambda v: (v >= low).astype(int) + (v >= high)  # noqa: E731
    assert s["group_change"] == pytest.approx(np.mean(g(p) != g(p0)[:, None]))
    assert sum(v["patients"] for v in s["by_group"].values()) == len(y)
    assert s["warning"] == (s["mape"] >= instability.MAPE_WARNING_RATIO * s["mean_risk"])
    m = instability.metrics(s)
    assert m["instability_mape"] == s["mape"] and m["instability_models"] == 8


def test_warning_text_only_when_unstable() -> None:
    base = {"models": 200, "n_dev": 150, "mape": 0.06, "mean_risk": 0.18, "group_change": 0.3}
    assert instability.warning_text({**base, "warning": False}) is None
    text = instability.warning_text({**base, "warning": True})
    assert "unstable" in text and "150 development patients" in text and "0.060" in text


def test_a_recalibrated_update_maps_every_bootstrap_model_as_the_final_one(cohort) -> None:
    X, y = cohort
    ens, _ = instability.bootstrap_ensemble("xgboost", PARAMS, X, y, 5, 3, seed=3, n_jobs=1)
    again = ens.recalibrated(-0.4, 0.7)
    np.testing.assert_allclose(again.margins(X), -0.4 + 0.7 * ens.margins(X), atol=1e-12)
    assert ens.margins(X[:1])[0, 0] != again.margins(X[:1])[0, 0]  # the original is left as it was


def test_each_bootstrap_model_is_calibrated_on_the_shipped_searchs_folds(cohort, monkeypatch, tmp_path):
    """The refits are the served procedure: Platt on the search's folds (search_cv_folds), as the final
    model is (pipeline.train.tuning.choose), not on the outer cross-validation's cv_folds."""
    from tests.helpers import make_settings

    X, y = cohort
    seen: dict[str, int] = {}

    def recording(kind, params, X, y, n_models, cv_folds, *args, **kwargs):
        seen["cv_folds"] = cv_folds
        raise RuntimeError("recorded")

    monkeypatch.setattr(instability, "bootstrap_ensemble", recording)
    settings = make_settings(tmp_path, cv_folds=5, search_cv_folds=3, instability_models=4)
    with pytest.raises(RuntimeError, match="recorded"):
        instability.analyse(None, "xgboost", PARAMS, X, y, settings, 1)
    assert seen["cv_folds"] == 3
