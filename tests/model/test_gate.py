"""The gate asks for positive evidence; the validated procedure is the shipped one; a challenger
meets the champion out of fold on the same patients (issue 23, findings 1-4 and 11)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.synthetic import generate_cohort
from pipeline.train.gate import GATE_RULE, INSUFFICIENT, MAX_SLOPE_CI_WIDTH, non_inferiority, quality_gate
from core.features import encode_frame
from pipeline.train.validation import (
    CALIBRATION_SPLIT_OFFSET,
    Search,
    outer_splits,
    platt_slope_of,
    search_configurations,
)
from tests.helpers import make_settings

GOOD = {"auroc": 0.74, "auroc_ci_low": 0.66, "auroc_ci_high": 0.81, "m_easix_auroc": 0.68,
        "auroc_minus_m_easix_ci_low": -0.02, "auroc_minus_m_easix_ci_high": 0.12, "logistic_auroc": 0.72,
        "auroc_minus_logistic_ci_low": -0.03, "auroc_minus_logistic_ci_high": 0.07,
        "calibration_slope": 0.95, "calibration_slope_ci_low": 0.62, "calibration_slope_ci_high": 1.35,
        "platt_slope": 0.9, "events": 60.0}


def test_a_good_model_passes_and_the_rule_is_stated_once():
    assert quality_gate(GOOD) == (True, "passed")
    assert "0.5" in GATE_RULE and "logistic" in GATE_RULE and "m-EASIX" in GATE_RULE and "repeat" in GATE_RULE


@pytest.mark.parametrize("change, words", [
    ({"auroc": 0.55, "auroc_ci_low": 0.47}, "not shown better than chance"),
    ({"auroc_ci_low": 0.5}, "not shown better than chance"),  # at 0.5 is not above it
    ({"auroc_minus_logistic_ci_low": -0.15, "auroc_minus_logistic_ci_high": -0.01}, "the logistic comparator"),
    ({"auroc_minus_m_easix_ci_low": -0.15, "auroc_minus_m_easix_ci_high": -0.01}, "m-EASIX"),
    ({"calibration_slope_ci_low": 1.35, "calibration_slope_ci_high": 2.0}, "outside the band"),
    ({"platt_slope": -0.2}, "Platt slope"),
])
def test_each_criterion_refuses_on_its_own(change, words):
    ok, reason = quality_gate({**GOOD, **change})
    assert not ok and words in reason and not reason.startswith(INSUFFICIENT)


def test_a_slope_interval_too_wide_to_judge_is_insufficient_evidence_and_says_what_would_settle_it():
    ok, reason = quality_gate({**GOOD, "calibration_slope_ci_low": 0.3, "calibration_slope_ci_high": 2.1})
    assert not ok and reason.startswith(INSUFFICIENT)
    # width 1.8 against at most 1.2 at 60 events: the interval narrows as 1/sqrt(events)
    need = int(np.ceil(60 * (1.8 / MAX_SLOPE_CI_WIDTH) ** 2))
    assert f"about {need} would narrow it" in reason and "make evaluate" in reason
    # a refusal on another criterion is a refusal, not a lack of evidence
    ok, reason = quality_gate({**GOOD, "auroc_ci_low": 0.45, "calibration_slope_ci_low": 0.3,
                               "calibration_slope_ci_high": 2.1})
    assert not ok and not reason.startswith(INSUFFICIENT) and "chance" in reason and "too wide" in reason


def test_without_an_interval_nothing_passes():
    ok, reason = quality_gate({"auroc": 0.8, "calibration_slope": 1.0})
    assert not ok and reason.startswith(INSUFFICIENT)


def test_the_platt_slope_of_a_reversed_model_is_negative():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, 400), 0.01, 0.99)
    assert platt_slope_of(p, y) > 0 > platt_slope_of(1 - p, y)


def test_every_search_starts_from_the_library_defaults_at_every_size():
    from models.candidates import CANDIDATES, LIBRARY_DEFAULTS, SMALL_DATA_EVENTS

    for name in CANDIDATES:
        for events in (SMALL_DATA_EVENTS - 1, SMALL_DATA_EVENTS + 500):
            configs = search_configurations(name, events, 4, seed=3)
            assert configs[0] == LIBRARY_DEFAULTS[name]
            assert 2 <= len(configs) <= min(4, 1 + np.prod([len(v) for v in _space(name, events).values()]))
            assert all(c != configs[0] for c in configs[1:])
    # the defaults really are the library's: an unconfigured estimator has them
    from sklearn.ensemble import HistGradientBoostingClassifier
    from xgboost import XGBClassifier

    hgb = HistGradientBoostingClassifier().get_params()
    # every default but max_depth, which is capped at the bootstrap ensemble's depth (sklearn: None)
    assert all(hgb[k] == v for k, v in LIBRARY_DEFAULTS["hist_gradient_boosting"].items() if k != "max_depth")
    assert hgb["max_depth"] is None and LIBRARY_DEFAULTS["hist_gradient_boosting"]["max_depth"] == 8
    xgb = XGBClassifier().get_xgb_params()  # xgboost leaves its defaults unset (None) in get_params
    assert xgb.get("max_depth") in (None, 6) and XGBClassifier().n_estimators in (None, 100)


def _space(name, events):
    from models.candidates import search_space

    return search_space(name, events)


def test_the_outer_cross_validation_runs_the_shipped_search(tmp_path, monkeypatch):
    """Finding 3: the final fit and every outer fold tune with the same search (space, configurations, folds)."""
    import pipeline.train.tuning as tuning
    import pipeline.train.validation as validation
    from pipeline.train.assessment import validation_procedure

    settings = make_settings(tmp_path, allow_ungated=False, n_iter=3, search_cv_folds=2, cv_folds=3)
    calls: list[tuple] = []
    real = validation.tune

    def recording(name, X, y, n_iter, cv_folds, seed, n_jobs, space_events=None):
        calls.append((name, n_iter, cv_folds, space_events or int(y.sum())))
        return real(name, X, y, n_iter, cv_folds, seed, n_jobs, space_events)

    monkeypatch.setattr(validation, "tune", recording)
    monkeypatch.setattr(tuning, "tune", recording)
    monkeypatch.setattr(tuning, "mlflow", _NoMlflow())
    df = generate_cohort(240, 4)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    tuning.tune_candidates(X, y, settings, "0", 1)  # the shipped fit
    shipped = set(calls)
    calls.clear()
    procedure = validation_procedure(settings, int(y.sum()))
    tr, _ = next(iter(outer_splits(y, 1, settings.cv_folds, settings.seed)))[2:]
    procedure.run(X[tr], y[tr], 11)  # one outer fold
    assert procedure.search == Search.of(settings) == Search(3, 2, tuple(settings.families))
    assert set(calls) == shipped and len(shipped) == 3  # same families, configurations, folds and space


class _NoMlflow:
    """Stands in for mlflow in tuning's logging (the search itself is what is under test)."""

    def start_run(self, **_):
        import contextlib

        return contextlib.nullcontext()

    def __getattr__(self, _):
        return lambda *a, **k: None


def test_calibration_margins_come_from_another_split_than_the_search():
    from sklearn.model_selection import StratifiedKFold

    y = np.r_[np.ones(40), np.zeros(160)].astype(int)
    a = [te for _, te in StratifiedKFold(3, shuffle=True, random_state=5).split(np.zeros((200, 1)), y)]
    b = [te for _, te in StratifiedKFold(3, shuffle=True, random_state=5 + CALIBRATION_SPLIT_OFFSET).split(
        np.zeros((200, 1)), y)]
    assert not any(np.array_equal(np.sort(x), np.sort(z)) for x in a for z in b)


def test_pooled_intervals_hold_the_between_repeat_spread():
    from pipeline.evidence.repeat_intervals import pooled_intervals

    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 2, n)
    base = 1 / (1 + np.exp(-(1.2 * (y - 0.5) + rng.normal(0, 1, n))))
    same = np.vstack([base] * 5)
    noisy = np.vstack([1 / (1 + np.exp(-(np.log(base / (1 - base)) * s))) for s in (0.4, 0.7, 1.0, 1.5, 2.2)])
    one = pooled_intervals(y, same, seed=0)
    spread = pooled_intervals(y, noisy, seed=0)
    w1 = one["calibration_slope_ci_high"] - one["calibration_slope_ci_low"]
    w2 = spread["calibration_slope_ci_high"] - spread["calibration_slope_ci_low"]
    assert w2 > 1.5 * w1  # the repeats' disagreement widens the interval


def test_threshold_figures_use_each_folds_own_thresholds():
    from pipeline.train.assessment import fold_thresholds_table

    y = np.array([1, 1, 0, 0])
    risk = np.array([0.30, 0.30, 0.30, 0.10])
    # patients 0 and 2 were predicted by a fold whose high threshold was 0.2, the others by one at 0.5
    table = fold_thresholds_table(y, risk, np.array([[0.05, 0.2], [0.05, 0.5], [0.05, 0.2], [0.05, 0.5]]))
    high = table.set_index("name").loc["high"]
    assert high["tp"] == 1 and high["fp"] == 1 and high["fn"] == 1 and high["tn"] == 1
    assert high["threshold"] == pytest.approx(0.35)


def test_non_inferiority_reads_each_criterion_on_its_own_side():
    crit = {"auroc": {"difference": -0.01, "ci_low": -0.025, "ci_high": 0.01, "challenger": 0.7, "champion": 0.71},
            "calibration_slope_distance": {"difference": 0.02, "ci_low": -0.1, "ci_high": 0.1, "challenger": 0.1,
                                           "champion": 0.08},
            "net_benefit_low": {"difference": 0.0, "ci_low": -0.005, "ci_high": 0.004, "challenger": 0.05,
                                "champion": 0.05}}
    ok, lines = non_inferiority(crit)
    assert ok and len(lines) == 3
    ok, lines = non_inferiority({**crit, "auroc": {**crit["auroc"], "ci_low": -0.06}})
    assert not ok and "beyond the margin -0.03" in lines[0]
    ok, _ = non_inferiority({**crit, "calibration_slope_distance": {**crit["calibration_slope_distance"],
                                                                    "ci_high": 0.3}})
    assert not ok


def test_the_champion_is_refitted_in_the_challengers_folds_and_never_predicts_a_patient_it_saw(monkeypatch):
    """Finding 2: out of fold on the same patients, the same outer folds as the challenger's."""
    import pipeline.train.assessment as assessment
    from pipeline.train.validation import repeated_cv

    df = generate_cohort(200, 9)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    seen: list[np.ndarray] = []

    def recording(config, X_train, y_train, X_test, cv_folds, seed):
        rows = {tuple(r) for r in X_train.round(9).tolist()}
        seen.append(np.array([tuple(r) in rows for r in X_test.round(9).tolist()]))
        return np.full(len(X_test), float(y_train.mean()))

    monkeypatch.setattr(assessment, "refit_predict", recording)
    out = assessment.refit_in_folds(("xgboost", {}), X, y, repeats=2, folds=4, seed=3, inner_folds=2)
    assert out.shape == (2, len(y)) and np.all(np.isfinite(out))  # every patient, every repeat
    assert len(seen) == 8 and not any(s.any() for s in seen)  # no test patient in its training rows
    # the same folds as the challenger's repeated cross-validation
    calls = []

    class Stub:
        def run(self, Xt, yt, seed):
            calls.append(seed)
            from pipeline.train.validation import FoldRun

            return FoldRun({"model": lambda Z: np.full(len(Z), 0.2)}, (0.1, 0.3), False)

    repeated_cv(X, y, Stub(), {}, 2, 4, 3, 1)  # type: ignore[arg-type]
    assert calls == [s for _, s, _, _ in outer_splits(y, 2, 4, 3)]


def test_the_training_docs_state_the_gate_and_promotion_rules_word_for_word():
    from pathlib import Path

    from pipeline.train.gate import PROMOTION_RULE

    readme = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    assert f"> {GATE_RULE}" in readme and f"> {PROMOTION_RULE}" in readme
