"""Clinical baseline scores: published formulas, finite on contract edge values, and the
score-to-probability mapping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from models.baselines import (
    CREATININE,
    CRP,
    LDH,
    LOG_SCORE_FLOOR,
    PLATELET_FLOOR_10E9_L,
    PLATELETS,
    SCORES,
    ScoreToProbability,
    easix,
    log2_score,
    m_easix,
)
from core.contract import FEATURES_BY_NAME, example_request


def _labs(ldh, creat, plt, crp) -> pd.DataFrame:
    return pd.DataFrame({LDH: ldh, CREATININE: creat, PLATELETS: plt, CRP: crp})


def test_columns_are_contract_columns():
    for name in (LDH, CREATININE, PLATELETS, CRP):
        assert name in FEATURES_BY_NAME
    assert set(SCORES) == {"easix", "m_easix"}


def test_scores_equal_hand_computed_values():
    df = _labs([240.0, 600.0, 150.0], [0.7, 1.2, 0.4], [85.0, 20.0, 300.0], [8.0, 120.0, 0.5])
    # EASIX = LDH * creatinine / platelets
    np.testing.assert_allclose(easix(df), [240 * 0.7 / 85, 600 * 1.2 / 20, 150 * 0.4 / 300])
    # m-EASIX = LDH * CRP[mg/dL] / platelets, CRP mg/L / 10
    np.testing.assert_allclose(m_easix(df), [240 * 0.8 / 85, 600 * 12.0 / 20, 150 * 0.05 / 300])


def test_scores_on_the_contract_example():
    req = example_request()
    df = pd.DataFrame([req])
    assert easix(df)[0] == pytest.approx(req[LDH] * req[CREATININE] / req[PLATELETS])


def test_zero_platelets_and_zero_crp_stay_finite():
    df = _labs([500.0, 500.0], [1.0, 1.0], [0.0, 0.5], [0.0, 0.0])
    for fn in (easix, m_easix):
        s = fn(df)
        assert np.all(np.isfinite(s))
        assert np.all(np.isfinite(log2_score(s)))
    # floor documented as 1 x10^9/L
    assert easix(df)[0] == pytest.approx(500.0 / PLATELET_FLOOR_10E9_L)
    assert log2_score(m_easix(df))[0] == pytest.approx(np.log2(LOG_SCORE_FLOOR))


def test_missing_column_raises():
    with pytest.raises(KeyError):
        easix(pd.DataFrame({LDH: [200.0], PLATELETS: [100.0]}))


def _cohort(n: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    df = _labs(
        rng.lognormal(np.log(250), 0.5, n),
        rng.lognormal(np.log(0.6), 0.3, n),
        rng.lognormal(np.log(100), 0.7, n),
        rng.lognormal(np.log(10), 1.2, n),
    )
    # outcome rises with log2(EASIX), OR ~1.7 per doubling, ~15% prevalence
    logit = -1.8 + np.log(1.7) * (np.log2(easix(df)) - 0.6)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df, y


@pytest.mark.parametrize("score", ["easix", "m_easix"])
def test_score_to_probability(score):
    df, y = _cohort()
    model = ScoreToProbability(score).fit(df, y)
    proba = model.predict_proba(df)
    assert proba.shape == (len(df), 2)
    assert np.all((proba > 0) & (proba < 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # unpenalised logistic regression with intercept: mean fitted risk = training prevalence
    assert proba[:, 1].mean() == pytest.approx(y.mean(), abs=0.005)
    # decision_function is the log-odds of predict_proba
    np.testing.assert_allclose(
        model.decision_function(df), np.log(proba[:, 1] / proba[:, 0]), rtol=1e-6
    )
    assert set(model.predict(df)) <= {0, 1}


def test_score_to_probability_increases_with_the_score():
    df, y = _cohort()
    model = ScoreToProbability("easix").fit(df, y)
    assert model.coef_ > 0
    assert 1.3 < model.odds_ratio_per_doubling_ < 2.3
    order = np.argsort(easix(df))
    p = model.predict_proba(df)[order, 1]
    assert np.all(np.diff(p) >= 0)


def test_score_to_probability_on_zero_labs_and_clone():
    df, y = _cohort()
    model = clone(ScoreToProbability("m_easix")).fit(df, y)
    edge = _labs([300.0], [0.8], [0.0], [0.0])
    p = model.predict_proba(edge)[:, 1]
    assert np.isfinite(p).all() and 0 < p[0] < 1


def test_unknown_score_raises():
    df, y = _cohort(200)
    with pytest.raises(ValueError):
        ScoreToProbability("hscore").fit(df, y)
