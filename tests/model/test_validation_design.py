"""The validation design follows the events, and each estimate is honest about what it saw."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.synthetic import generate_cohort
from pipeline.evidence.directions import feature_directions
from core.features import MATRIX_NAMES, encode_frame
from pipeline.train.validation import RESAMPLING, SPLIT, Procedure, TrainingRefused, check_trainable, choose_design, repeated_cv
from tests.helpers import make_settings


@pytest.mark.parametrize("events, expected", [(20, RESAMPLING), (150, RESAMPLING), (399, RESAMPLING),
                                              (400, SPLIT), (3000, SPLIT)])
def test_design_is_chosen_on_events_not_rows(tmp_path, events, expected):
    s = make_settings(tmp_path, validation="auto", test_fraction=0.25, split_min_test_events=100)
    design = choose_design(events, 10_000, s)
    assert design.kind == expected
    assert str(events) in design.reason


def test_design_can_be_forced(tmp_path):
    assert choose_design(30, 200, make_settings(tmp_path, validation="split")).kind == SPLIT
    assert choose_design(3000, 9000, make_settings(tmp_path, validation="repeated_cv")).kind == RESAMPLING


def test_too_few_events_or_non_events_are_refused_in_one_line():
    with pytest.raises(TrainingRefused, match=r"^12 events of 'severe_icans': at least 20 are needed"):
        check_trainable(np.r_[np.ones(12), np.zeros(100)], "severe_icans", 20)
    with pytest.raises(TrainingRefused, match=r"^5 patients without 'severe_crs'"):
        check_trainable(np.r_[np.ones(100), np.zeros(5)], "severe_crs", 20)
    check_trainable(np.r_[np.ones(20), np.zeros(20)], "severe_icans", 20)


def test_repeated_cv_predicts_every_patient_out_of_fold_and_is_below_apparent():
    df = generate_cohort(240, 21)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    proc = Procedure(n_iter=1, cv_folds=2)
    fitted_all = proc(X, y, 0)
    apparent = {name: f(X) for name, f in fitted_all.items()}
    res = repeated_cv(X, y, proc, apparent, repeats=2, folds=3, seed=0, n_jobs=1)
    for name, preds in res.predictions.items():
        assert preds.shape == (2, len(y)) and np.all(np.isfinite(preds)), name
        assert not np.allclose(preds[0], preds[1])  # the two repeats split the patients differently
    # an untuned boosted model memorises its training patients; cross-validation sees through it
    assert res.apparent["hgb_untuned"]["auroc"] > 0.95
    assert res.estimate("hgb_untuned")["auroc"] < res.apparent["hgb_untuned"]["auroc"] - 0.15
    assert res.optimism("model")["auroc"] > 0


def test_directions_read_the_sign_and_flag_contradictions():
    df = generate_cohort(300, 2)
    X = encode_frame(df)
    j_crp = MATRIX_NAMES.index("crp_mg_l")

    def predict(Z):  # CRP lowers this fake model's risk, platelets do nothing
        return 1 / (1 + np.exp(0.01 * Z[:, j_crp]))

    table = feature_directions(X, predict).set_index("feature")
    assert table.loc["crp_mg_l", "model_direction"] == "lowers risk"
    assert table.loc["crp_mg_l", "contradiction"]  # CRP is published as raising risk
    assert table.loc["platelets_10e9_l", "model_direction"] == "no effect"
    assert not table.loc["platelets_10e9_l", "contradiction"]
    assert "product" not in table.index  # a four-level category has no single direction


def test_the_served_model_follows_every_published_direction(bundle):
    df = generate_cohort(1000, 5)
    table = feature_directions(encode_frame(df), bundle.predict_proba)
    assert not table["contradiction"].any(), table[table["contradiction"]]
    creatinine = table.set_index("feature").loc["creatinine_mg_dl"]
    assert creatinine["risk_high"] >= creatinine["risk_low"]


def test_repeats_shrink_only_where_the_data_are_large(tmp_path):
    s = make_settings(tmp_path, validation="auto", cv_repeats=5)
    assert choose_design(60, 400, s).repeats == 5
    assert choose_design(199, 1200, s).repeats == 5
    assert choose_design(328, 2000, s).repeats == 2 and "2 x" in choose_design(328, 2000, s).reason
    assert choose_design(500, 2000, make_settings(tmp_path, validation="split")).repeats == 0
