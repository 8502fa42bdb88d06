"""`build_evidence`: every section of the evidence for one model on one validation set, computed
once (the comparators on the same bootstrap resamples as the model)."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.stats.bootstrap import bootstrap_replicates
from core.contract import DEFAULT_OUTCOME, ORACLE_COLUMN
from pipeline.evidence.by_subgroup import SMALL_SUBGROUP_EVENTS, SMALL_SUBGROUP_N, subgroups
from pipeline.evidence.calibration import calibration_intervals, calibration_summary
from pipeline.evidence.calibration_curve import calibration_curve_data
from pipeline.evidence.decision import decision_curve_with_band
from pipeline.evidence.discrimination import discrimination_with_ci, paired_difference
from pipeline.evidence.min_sample_size import ANTICIPATED_C, sample_size
from pipeline.evidence.names import EASIX, M_EASIX, MODEL, ORACLE
from pipeline.evidence.record import Evidence
from pipeline.evidence.thresholds import risk_group_table, thresholds_table
from pipeline.stats.metrics import _as_binary, _as_score, auroc


def build_evidence(
    y_dev: np.ndarray | None,
    p_dev_oof: np.ndarray | None,
    dev_df: pd.DataFrame | None,
    y_test: np.ndarray,
    p_test: np.ndarray,
    test_df: pd.DataFrame,
    thresholds: Mapping[str, float],
    n_params: int,
    outcome: str = DEFAULT_OUTCOME,
    m_easix_model: Any | None = None,
    *,
    other_predictions: Mapping[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    learning_curve: pd.DataFrame | None = None,
    anticipated_c: float | None = ANTICIPATED_C,
    curve_boot: int = 200,
    meta: Mapping[str, Any] | None = None,
) -> Evidence:
    """All the evidence for one model on one validation set.

    y_dev, p_dev_oof, dev_df: development outcomes, out-of-fold risks (or None) and rows; pass
      None for all three in an external validation (no sample-size section then).
    y_test, p_test, test_df: validation outcomes, the model's calibrated risks, and rows (contract
      columns; the true risk in `ORACLE_COLUMN` is used as the oracle when present and the outcome
      is severe ICANS).
    thresholds: the risk-group thresholds chosen on development data, e.g. {'low': .., 'high': ..}.
    n_params: candidate predictor parameters (for events per parameter and the sample size).
    m_easix_model: m-EASIX -> probability (`models.baselines.ScoreToProbability('m_easix')`) fitted
      on development data; fitted here on dev_df when None and dev_df is given; without either
      m-EASIX enters discrimination only (noted).
    other_predictions: further comparators' probabilities on the validation set (e.g. {'logistic': p}).
    n_boot / seed: bootstrap resamples (>= 1,000 for the report) and their seed; curve_boot: the
      resamples for the band of the smoothed calibration curve.
    """
    from models.baselines import SCORES, ScoreToProbability

    started = time.perf_counter()
    y = _as_binary(y_test)
    p = _as_score(p_test, y.shape[0], probability=True)
    if len(test_df) != y.shape[0]:
        raise ValueError(f"test_df has {len(test_df)} rows but y_test has {y.shape[0]}")
    test_df = test_df.reset_index(drop=True)
    notes: list[str] = []

    discrimination = {MODEL: discrimination_with_ci(y, p, n_boot, seed)}
    model_reps = bootstrap_replicates(y, p, auroc, n_boot, seed) if 0 < y.sum() < y.shape[0] else None
    comparisons: dict[str, dict[str, float]] = {}
    for name, score in SCORES.items():
        s = np.asarray(score(test_df), dtype=float)
        if not np.all(np.isfinite(s)):
            notes.append(f"{name}: missing labs in the validation set; not evaluated")
            continue
        discrimination[name] = discrimination_with_ci(y, s, n_boot, seed)
        comparisons[name] = paired_difference(y, p, s, n_boot, seed, model_replicates=model_reps)

    probabilities: dict[str, np.ndarray] = {MODEL: p}
    if m_easix_model is None and dev_df is not None and y_dev is not None:
        m_easix_model = ScoreToProbability(score=M_EASIX).fit(dev_df, _as_binary(y_dev))
    if m_easix_model is not None:
        probabilities[M_EASIX] = m_easix_model.predict_proba(test_df)[:, 1]
    else:
        notes.append("m-EASIX: no probability model fitted on development data; decision curve and "
                     "calibration of m-EASIX omitted")
    for name, q in (other_predictions or {}).items():
        q = _as_score(q, y.shape[0], probability=True)
        probabilities[name] = q
        discrimination[name] = discrimination_with_ci(y, q, n_boot, seed)
        comparisons[name] = paired_difference(y, p, q, n_boot, seed, model_replicates=model_reps)

    if outcome == "severe_icans" and ORACLE_COLUMN in test_df and test_df[ORACLE_COLUMN].notna().all():
        discrimination[ORACLE] = discrimination_with_ci(y, test_df[ORACLE_COLUMN].to_numpy(float), n_boot, seed)

    # the decision curve shows EASIX too (rescaled on the development data, as m-EASIX)
    dc_probabilities = dict(probabilities)
    if dev_df is not None and y_dev is not None and np.all(np.isfinite(SCORES[EASIX](test_df))):
        easix_model = ScoreToProbability(score=EASIX).fit(dev_df, _as_binary(y_dev))
        dc_probabilities[EASIX] = easix_model.predict_proba(test_df)[:, 1]

    calibration = {name: calibration_summary(y, q) for name, q in probabilities.items()}
    calibration[MODEL].update(calibration_intervals(y, p, n_boot, seed))
    curves = {name: calibration_curve_data(y, q, n_boot=curve_boot if name == MODEL else 0, seed=seed)
              for name, q in probabilities.items()}

    size = None
    development = None
    if y_dev is not None:
        yd = _as_binary(y_dev)
        if 0 < yd.sum() < yd.shape[0]:
            size = sample_size(int(yd.shape[0]), int(yd.sum()), n_params, anticipated_c=anticipated_c)
            if size["warning"]:
                notes.append(size["warning"])
        if p_dev_oof is not None:
            pd_oof = _as_score(p_dev_oof, yd.shape[0], probability=True)
            development = {**discrimination_with_ci(yd, pd_oof, n_boot, seed), **calibration_summary(yd, pd_oof)}

    small = subgroups(test_df, y, p, n_boot=n_boot, seed=seed)
    if small["small"].any():
        notes.append(f"{int(small['small'].sum())} subgroup level(s) are small (n < {SMALL_SUBGROUP_N} or "
                     f"events < {SMALL_SUBGROUP_EVENTS}): their figures are unstable")

    return Evidence(
        outcome=outcome,
        n_boot=n_boot,
        discrimination=discrimination,
        comparisons=comparisons,
        calibration=calibration,
        calibration_curves=curves,
        decision_curve=decision_curve_with_band(y, dc_probabilities, n_boot=min(n_boot, 200), seed=seed),
        subgroups=small,
        sample_size=size,
        thresholds=thresholds_table(y, p, thresholds),
        risk_groups=risk_group_table(y, p, thresholds),
        learning_curve=learning_curve,
        development=development,
        notes=notes,
        meta=dict(meta or {}),
        y_test=y,
        predictions=probabilities,
        seconds=time.perf_counter() - started,
    )
