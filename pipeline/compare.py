"""The verdicts on a new model: the quality gate, the champion comparison, and the comparators.

The gate refuses a model no champion comparison could excuse; the champion comparison holds a
champion that may have seen the patients to its own validated figure; the notes say when a
simpler model does as well. All on the validation design's honest estimates.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np

from models.artifact import ModelBundle
from pipeline.validation import LOGISTIC, UNTUNED_HGB

CALIBRATION_SLOPE_BAND = (0.7, 1.3)


def quality_gate(validated: dict[str, float]) -> tuple[bool, str]:
    """A model that no champion comparison can excuse: clearly miscalibrated, or clearly worse than m-EASIX.

    Both on the design's honest estimates (held-out, or repeated cross-validation) with their uncertainty:
    refused when the 95% interval of the calibration slope lies wholly outside CALIBRATION_SLOPE_BAND,
    or when the 95% interval of AUROC(model) - AUROC(m-EASIX) lies wholly below 0. A small cohort's
    uncertainty is not held against a model; a clearly bad model is refused at any size.
    """
    low_band, high_band = CALIBRATION_SLOPE_BAND
    lo = validated.get("calibration_slope_ci_low", validated.get("calibration_slope", np.nan))
    hi = validated.get("calibration_slope_ci_high", validated.get("calibration_slope", np.nan))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < low_band or lo > high_band:
        return False, f"calibration slope 95% CI {lo:.2f}-{hi:.2f} lies outside the band {low_band}-{high_band}"
    diff_hi = validated.get("auroc_minus_m_easix_ci_high", np.nan)
    m_easix = validated.get("m_easix_auroc", np.nan)
    if np.isfinite(diff_hi):
        if diff_hi < 0:
            return False, (f"AUROC {validated['auroc']:.3f} is below m-EASIX's {m_easix:.3f}: the 95% CI of the "
                           f"difference ({validated.get('auroc_minus_m_easix_ci_low', np.nan):+.3f} to {diff_hi:+.3f}) "
                           "lies below 0")
    elif np.isfinite(m_easix) and validated["auroc"] < m_easix:
        return False, f"AUROC {validated['auroc']:.4f} is below m-EASIX's {m_easix:.4f}"
    return True, "passed"


def fair_comparison(champ: ModelBundle, paired: dict[str, float], validated: dict[str, float]) -> dict[str, Any]:
    """The champion's AUROC for the comparison, without the advantage of having seen the patients.

    A champion may have been fitted on some of these patients (a retraining on a file with patients
    added): scored on them, its AUROC is optimistic. So it is held to the lower of its AUROC here
    and its own validated estimate (held-out or cross-validated, recorded in its bundle); when the
    latter is used, the difference's interval is the new model's own interval moved by it.
    """
    here = paired["auroc_other"]
    recorded = (champ.metadata.get("validation") or {}).get("estimates", {}).get("auroc")
    if recorded is None or not np.isfinite(recorded) or recorded >= here:
        return {"champion_auroc": here, "difference": paired["difference"], "ci_low": paired["ci_low"],
                "ci_high": paired["ci_high"], "basis": "on the same patients"}
    new = validated["auroc"]
    return {"champion_auroc": float(recorded), "difference": new - recorded,
            "ci_low": validated.get("auroc_ci_low", np.nan) - recorded,
            "ci_high": validated.get("auroc_ci_high", np.nan) - recorded,
            "basis": (f"against the champion's own validated AUROC (it scores {here:.3f} on these patients, "
                      "some of which it may have been fitted on)")}


def comparison_notes(validated: dict[str, float], metrics: dict[str, float], design_kind: str) -> list[str]:
    """Say so (a printed note and a run tag) when a simpler model does as well or better, on the same estimates."""
    notes = []
    v = validated
    for name, label in ((LOGISTIC, "the logistic comparator"), (UNTUNED_HGB, "an untuned HistGradientBoosting")):
        other = metrics.get(f"validated_{name}_auroc", metrics.get(f"test_{name}_auroc", np.nan))
        if np.isfinite(other) and other > v["auroc"]:
            notes.append(f"NOTE: {label} reaches AUROC {other:.3f}, above the chosen model's {v['auroc']:.3f} "
                         f"({design_kind} estimate).")
            mlflow.set_tag(f"{name}_beats_model", f"{other - v['auroc']:.4f}")
    if np.isfinite(v.get("m_easix_auroc", np.nan)) and v["m_easix_auroc"] > v["auroc"]:
        notes.append(f"NOTE: the clinical score m-EASIX reaches AUROC {v['m_easix_auroc']:.3f}, above the model's "
                     f"{v['auroc']:.3f}.")
        mlflow.set_tag("m_easix_beats_model", "true")
    return notes
