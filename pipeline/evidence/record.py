"""`Evidence`: everything computed for one model on one set, its stable MLflow metric names and its
JSON summary (aggregates only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evidence.decision import NET_BENEFIT_REPORTED, net_benefit
from pipeline.evidence.names import MODEL, TREAT_ALL, TREAT_NONE, pct, safe_name


@dataclass
class Evidence:
    """Everything the validation report and the model card show, for one model on one set.

    discrimination: name -> `discrimination_with_ci` (MODEL, EASIX, M_EASIX raw scores, any other
      comparator, ORACLE when the true risk is known);
    comparisons: name -> `paired_difference(model, name)`;
    calibration: name -> `calibration_summary` (+ `calibration_intervals` for the model), for the
      probabilities (model, m-EASIX rescaled on development data, other comparators);
    calibration_curves: name -> `calibration_curve_data`;
    decision_curve: `decision_curve` table; subgroups: `subgroups` table of the model;
    sample_size: `sample_size` (None without development data); thresholds: `thresholds_table`;
    risk_groups: `risk_group_table`; learning_curve: `learning_curve` table or None;
    development: out-of-fold discrimination + calibration on the development data, or None;
    notes: caveats found while computing (e.g. no m-EASIX probability model);
    meta: free context (model name, version, run id, data source) shown in the report header.
    The test outcomes and predictions are kept (y_test, predictions) for the plots; `to_dict`
    leaves them out so no patient-level data is written anywhere.
    """

    outcome: str
    n_boot: int
    discrimination: dict[str, dict[str, float]]
    comparisons: dict[str, dict[str, float]]
    calibration: dict[str, dict[str, float]]
    calibration_curves: dict[str, dict[str, pd.DataFrame]]
    decision_curve: pd.DataFrame
    subgroups: pd.DataFrame
    sample_size: dict[str, Any] | None
    thresholds: pd.DataFrame
    risk_groups: pd.DataFrame
    learning_curve: pd.DataFrame | None = None
    development: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    y_test: np.ndarray | None = field(default=None, repr=False)
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    seconds: float = float("nan")
    # the validation design (split or optimism-corrected bootstrap) and the estimates the gate used
    validation: dict[str, Any] | None = None
    # each feature's direction in the model against its published direction (`feature_directions`)
    directions: pd.DataFrame | None = None

    def net_benefit_at(self, model: str, threshold: float) -> float:
        """Net benefit of `model` ('treat all' included) at one threshold, from the kept
        predictions (exact at 0.05 / 0.10 / 0.20, not read off the grid)."""
        if self.y_test is None:
            return float("nan")
        if model == TREAT_ALL:
            prev = float(np.mean(self.y_test))
            return prev - (1 - prev) * threshold / (1 - threshold)
        if model == TREAT_NONE:
            return 0.0
        return float(net_benefit(self.y_test, self.predictions[model], [threshold])[0])

    def flat_metrics(self, prefix: str = "test", finite_only: bool = True) -> dict[str, float]:
        """MLflow metrics with stable names. With prefix 'test' (training's held-out set):

        test_auroc, test_auroc_ci_low/high, test_auprc(_ci_low/high), test_n, test_events,
        test_prevalence; test_<comparator>_auroc / _auprc (+ _ci_low/high) for easix, m_easix,
        any other comparator and oracle; test_auroc_minus_<comparator> (+ _ci_low/high);
        test_calibration_slope / _intercept (+ _ci_low/high), test_calibration_in_the_large,
        test_observed_expected_ratio, test_ici, test_e50, test_e90, test_emax, test_brier
        (+ _ci_low/high), test_scaled_brier, and test_<comparator>_<same> for the comparators'
        probabilities; net_benefit_at_5pct/10pct/20pct, net_benefit_<comparator>_at_..,
        net_benefit_treat_all_at_..; threshold_<name>_sensitivity/specificity/ppv/npv;
        subgroup_<group>_<level>_n/events/auroc/brier/calibration_in_the_large;
        events_per_parameter, sample_size_required, sample_size_adequate (1/0),
        expected_shrinkage; dev_oof_auroc, dev_oof_calibration_slope, ... when development
        predictions were given. Another prefix (e.g. 'external') replaces 'test' and prefixes the
        net benefit, threshold and subgroup names as well. Non-finite values are left out when
        finite_only (MLflow cannot chart NaN).
        """
        out: dict[str, float] = {}
        pre = f"{prefix}_"
        other = "" if prefix == "test" else pre

        def put(name: str, value: Any) -> None:
            if value is None:
                return
            out[name] = float(value)

        for name, d in self.discrimination.items():
            stem = pre if name == MODEL else f"{pre}{safe_name(name)}_"
            for key in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high"):
                put(stem + key, d.get(key))
            if name == MODEL:
                put(pre + "n", d["n"])
                put(pre + "events", d["events"])
                put(pre + "prevalence", d["prevalence"])
        for name, c in self.comparisons.items():
            stem = f"{pre}auroc_minus_{safe_name(name)}"
            put(stem, c["difference"])
            put(stem + "_ci_low", c["ci_low"])
            put(stem + "_ci_high", c["ci_high"])
        cal_keys = ("calibration_slope", "calibration_slope_ci_low", "calibration_slope_ci_high",
                    "calibration_intercept", "calibration_intercept_ci_low", "calibration_intercept_ci_high",
                    "calibration_in_the_large", "observed_expected_ratio", "ici", "e50", "e90", "emax",
                    "brier", "brier_ci_low", "brier_ci_high", "scaled_brier")
        for name, c in self.calibration.items():
            stem = pre if name == MODEL else f"{pre}{safe_name(name)}_"
            for key in cal_keys:
                put(stem + key, c.get(key))
        if self.y_test is not None:
            for t in NET_BENEFIT_REPORTED:
                put(f"{other}net_benefit_at_{pct(t)}", self.net_benefit_at(MODEL, t))
                put(f"{other}net_benefit_treat_all_at_{pct(t)}", self.net_benefit_at(TREAT_ALL, t))
                for name in self.predictions:
                    if name != MODEL:
                        put(f"{other}net_benefit_{safe_name(name)}_at_{pct(t)}", self.net_benefit_at(name, t))
        for row in self.thresholds.to_dict(orient="records"):
            for key in ("sensitivity", "specificity", "ppv", "npv"):
                put(f"{other}threshold_{safe_name(row['name'])}_{key}", row[key])
        for row in self.subgroups.to_dict(orient="records"):
            stem = f"{other}subgroup_{row['group']}_{row['level']}_"
            for key in ("n", "events", "auroc", "brier", "calibration_in_the_large"):
                put(stem + key, row[key])
        if self.sample_size is not None:
            s = self.sample_size
            put("events_per_parameter", s["events_per_parameter"])
            put("sample_size_required", s["n_required"])
            put("sample_size_adequate", 1.0 if s["adequate"] else 0.0)
            put("expected_shrinkage", s["expected_shrinkage"])
        if self.development is not None:
            for key, value in self.development.items():
                if key not in ("n_boot", "brier_null") and isinstance(value, (int, float, np.floating, np.integer)):
                    put(f"dev_oof_{key}", value)
        if finite_only:
            out = {k: v for k, v in out.items() if math.isfinite(v)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (aggregates only, no patient-level values)."""

        def plain(v: Any) -> Any:
            if isinstance(v, pd.DataFrame):
                return [plain(r) for r in v.to_dict(orient="records")]
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (float, np.floating)):
                return float(v) if math.isfinite(float(v)) else None
            if isinstance(v, np.bool_):
                return bool(v)
            return v

        return plain({
            "outcome": self.outcome, "n_boot": self.n_boot, "meta": self.meta, "notes": self.notes,
            "discrimination": self.discrimination, "comparisons": self.comparisons,
            "calibration": self.calibration, "decision_curve": self.decision_curve,
            "subgroups": self.subgroups, "sample_size": self.sample_size,
            "thresholds": self.thresholds, "risk_groups": self.risk_groups,
            "learning_curve": self.learning_curve, "development": self.development,
            "validation": self.validation, "directions": self.directions,
            "calibration_curves": {k: {"binned": v["binned"], "smoothed": v["smoothed"]} for k, v in self.calibration_curves.items()},
        })
