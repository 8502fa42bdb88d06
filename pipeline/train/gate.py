"""The verdicts on a new model: the quality gate, the champion comparison, and the comparators.

The gate asks for positive evidence (`GATE_RULE`, stated once: README, model card and run
description quote it); the champion comparison refits the champion's configuration in the same
folds as the challenger and promotes on pre-specified non-inferiority margins (`PROMOTION_RULE`);
the notes say when a simpler model does as well. All on the validation design's honest estimates,
and, when the training validated by centre (`pipeline.train.iecv`), on the pooled random-effects
estimates of internal-external cross-validation as well: how the model transports to a new centre.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import mlflow
import numpy as np

from pipeline.stats.meta_analysis import Pooled
from pipeline.train.validation import LOGISTIC_MODEL, UNTUNED_HGB

CALIBRATION_SLOPE_BAND = (0.7, 1.3)
# A calibration-slope interval wider than this cannot say whether the model is over- or
# under-fitted by the band's standard (the band itself is 0.6 wide): "insufficient evidence".
MAX_SLOPE_CI_WIDTH = 1.2
CHANCE_AUROC = 0.5

GATE_RULE = (
    "A model is served only on positive evidence, every figure from the validation design (held-out set, or "
    "repeated cross-validation of the whole procedure) with a 95% interval that pools the patient bootstrap of "
    "every repeat (so it holds the between-repeat spread): (1) the Platt slope fitted on out-of-fold margins is "
    "positive; (2) the lower 95% limit of the validated AUROC is above 0.5 (better than chance); (3) it is not "
    "clearly worse than the logistic comparator or m-EASIX on the same patients (the 95% interval of the "
    "paired AUROC difference does not lie wholly below 0); (4) the 95% interval of the calibration slope "
    f"reaches the band {CALIBRATION_SLOPE_BAND[0]}-{CALIBRATION_SLOPE_BAND[1]}. A slope interval wider than "
    f"{MAX_SLOPE_CI_WIDTH} is too wide to judge: the model is registered but not promoted (insufficient "
    "evidence) and the reason says how many events would settle it. (5) When the training validated by centre "
    "(internal-external cross-validation, a file with at least 3 centres of at least 10 events and 10 non-events), "
    "the model must also transport, on the pooled random-effects estimates (REML, Hartung-Knapp-Sidik-Jonkman "
    "intervals): the lower 95% limit of the pooled AUROC is above 0.5, and the 95% interval of the pooled "
    "calibration slope reaches the band; and when the 95% prediction interval of the calibration slope for a new "
    "centre lies wholly outside the band, between-centre heterogeneity is too large for one model: it is "
    "registered but not promoted, and the reason suggests updating it locally at each centre "
    "(make update DATA=<centre file>)."
)
HETEROGENEITY = "between-centre heterogeneity is too large for one model"

# Non-inferiority margins of the challenger against the champion, fixed before any comparison.
PROMOTION_MARGINS: dict[str, float] = {
    "auroc": 0.03,  # lower 95% limit of AUROC(challenger) - AUROC(champion) above -0.03
    "calibration_slope_distance": 0.15,  # upper limit of |slope-1| (challenger) - |slope-1| (champion) below 0.15
    "calibration_intercept_distance": 0.20,  # the same for |calibration-in-the-large| (log-odds)
    "net_benefit": 0.01,  # lower limit of the net-benefit difference at each risk-group threshold above -0.01
}

PROMOTION_RULE = (
    "A challenger replaces the champion only when it is non-inferior on the same patients: the champion's "
    "configuration (family and hyperparameters from its bundle) is refitted inside the same outer folds (or on "
    "the same development set) as the challenger, both predict every patient out of fold, and the 95% pooled "
    f"paired intervals must show AUROC not lower by more than {PROMOTION_MARGINS['auroc']}, |calibration slope - 1| "
    f"not larger by more than {PROMOTION_MARGINS['calibration_slope_distance']}, |calibration-in-the-large| not "
    f"larger by more than {PROMOTION_MARGINS['calibration_intercept_distance']} (log-odds) and net benefit at "
    f"each risk-group threshold not lower by more than {PROMOTION_MARGINS['net_benefit']}. AUROCs of different "
    "cohorts are never compared. When the training validated by centre, the champion's configuration is also "
    "refitted leaving each centre out as the challenger was, and the same margins apply to the per-centre paired "
    "differences pooled by random effects (Hartung-Knapp-Sidik-Jonkman 95% interval): the challenger must be "
    "non-inferior on both."
)

INSUFFICIENT = "insufficient evidence"


def heterogeneity_too_large(pooled: Mapping[str, Pooled]) -> bool:
    """`GATE_RULE` (5): the calibration slope's 95% prediction interval for a new centre lies
    wholly outside `CALIBRATION_SLOPE_BAND` (a new centre would very likely need its own update)."""
    s = pooled.get("calibration_slope")
    lo, hi = CALIBRATION_SLOPE_BAND
    return s is not None and bool(np.isfinite(s.pi_low)) and (s.pi_high < lo or s.pi_low > hi)


def _transport(pooled: Mapping[str, Pooled], refused: list[str], insufficient: list[str]) -> None:
    """`GATE_RULE` (5) on the pooled IECV estimates: appends to the refusals and the missing evidence."""
    a, s = pooled.get("auroc"), pooled.get("calibration_slope")
    if a is None or not np.isfinite(a.ci_low):
        insufficient.append("no pooled AUROC over the centres could be computed")
    elif a.ci_low <= CHANCE_AUROC:
        refused.append(f"not shown to transport better than chance: pooled AUROC over {a.k} centres {a.estimate:.3f} "
                       f"(95% CI {a.ci_low:.3f}-{a.ci_high:.3f}) has its lower limit at or below {CHANCE_AUROC}")
    low_band, high_band = CALIBRATION_SLOPE_BAND
    if s is None or not np.isfinite(s.ci_low):
        insufficient.append("no pooled calibration slope over the centres could be computed")
        return
    if s.ci_high < low_band or s.ci_low > high_band:
        refused.append(f"pooled calibration slope over {s.k} centres, 95% CI {s.ci_low:.2f}-{s.ci_high:.2f}, lies "
                       f"outside the band {low_band}-{high_band}")
    if heterogeneity_too_large(pooled):
        refused.append(f"{HETEROGENEITY}: the 95% prediction interval of the calibration slope for a new centre, "
                       f"{s.pi_low:.2f}-{s.pi_high:.2f} (tau2 {s.tau2:.3f}, I2 {s.i2:.0f}%), lies wholly outside "
                       f"the band {low_band}-{high_band}; update the model locally at each centre "
                       "(make update DATA=<centre file>) before use there")


def quality_gate(validated: dict[str, float], pooled: Mapping[str, Pooled] | None = None) -> tuple[bool, str]:
    """`GATE_RULE` on the validated estimates, and on `pooled` (the IECV's random-effects estimates by
    measure) when the training validated by centre: (passed, reason). A refusal's reason names every
    failed criterion; "insufficient evidence: ..." when only the evidence is too uncertain."""
    refused: list[str] = []
    insufficient: list[str] = []
    platt = validated.get("platt_slope", np.nan)
    if np.isfinite(platt) and platt <= 0:
        refused.append(f"the Platt slope on out-of-fold margins is {platt:.2f} (not positive): the model ranks "
                       "patients no better than the reverse of its own order, so no calibration can serve it")
    lo = validated.get("auroc_ci_low", np.nan)
    if not np.isfinite(lo):
        insufficient.append("no interval of the validated AUROC could be computed")
    elif lo <= CHANCE_AUROC:
        refused.append(f"not shown better than chance: validated AUROC {validated.get('auroc', np.nan):.3f} "
                       f"(95% CI {lo:.3f}-{validated.get('auroc_ci_high', np.nan):.3f}) has its lower limit at or "
                       f"below {CHANCE_AUROC}")
    for key, label in (("m_easix", "m-EASIX"), (LOGISTIC_MODEL, "the logistic comparator")):
        d_lo = validated.get(f"auroc_minus_{key}_ci_low", np.nan)
        d_hi = validated.get(f"auroc_minus_{key}_ci_high", np.nan)
        if np.isfinite(d_hi) and d_hi < 0:
            refused.append(f"clearly worse than {label}: AUROC {validated.get('auroc', np.nan):.3f} against "
                           f"{validated.get(f'{key}_auroc', np.nan):.3f}, difference 95% CI {d_lo:+.3f} to "
                           f"{d_hi:+.3f} lies below 0")
    low_band, high_band = CALIBRATION_SLOPE_BAND
    s_lo = validated.get("calibration_slope_ci_low", np.nan)
    s_hi = validated.get("calibration_slope_ci_high", np.nan)
    if not (np.isfinite(s_lo) and np.isfinite(s_hi)):
        insufficient.append("no interval of the calibration slope could be computed")
    elif s_hi < low_band or s_lo > high_band:
        refused.append(f"calibration slope 95% CI {s_lo:.2f}-{s_hi:.2f} lies outside the band {low_band}-{high_band}")
    elif s_hi - s_lo > MAX_SLOPE_CI_WIDTH:
        events = validated.get("events", np.nan)
        more = ""
        if np.isfinite(events) and events > 0:  # the interval narrows as 1/sqrt(events)
            need = int(math.ceil(events * ((s_hi - s_lo) / MAX_SLOPE_CI_WIDTH) ** 2))
            more = f" (this cohort has {int(events)} events: about {need} would narrow it enough)"
        insufficient.append(f"the calibration slope's 95% CI {s_lo:.2f}-{s_hi:.2f} is {s_hi - s_lo:.2f} wide, too wide "
                            f"to judge (at most {MAX_SLOPE_CI_WIDTH}). What would settle it: more events{more}, "
                            "or an external validation cohort (make evaluate)")
    if pooled is not None:
        _transport(pooled, refused, insufficient)
    if refused:
        return False, "; ".join(refused + insufficient)
    if insufficient:
        return False, f"{INSUFFICIENT}: " + "; ".join(insufficient)
    return True, "passed"


def gate_status(ok: bool, reason: str) -> str:
    """passed / insufficient evidence / refused: the run's and the version's tag."""
    return "passed" if ok else (INSUFFICIENT if reason.startswith(INSUFFICIENT) else "refused")


def non_inferiority(criteria: dict[str, dict[str, float]]) -> tuple[bool, list[str]]:
    """`PROMOTION_MARGINS` applied to `pipeline.evidence.repeat_intervals.paired_comparison`'s output:
    (every criterion met, one line per criterion)."""
    ok, lines = True, []
    for key, d in criteria.items():
        margin_key = "net_benefit" if key.startswith("net_benefit") else key
        margin = PROMOTION_MARGINS[margin_key]
        distance = key.endswith("_distance")
        bound = d["ci_high"] if distance else d["ci_low"]
        met = bool(np.isfinite(bound) and (bound < margin if distance else bound > -margin))
        ok = ok and met
        word = "upper" if distance else "lower"
        lines.append(f"{key}: challenger {d['challenger']:.3f}, champion {d['champion']:.3f}, difference "
                     f"{d['difference']:+.3f} (95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}); {word} limit "
                     f"{'within' if met else 'beyond'} the margin {'+' if distance else '-'}{margin}")
    return ok, lines


def comparison_notes(validated: dict[str, float], metrics: dict[str, float], design_kind: str) -> list[str]:
    """Say so (a printed note and a run tag) when a simpler model does as well or better, on the same estimates."""
    notes = []
    v = validated
    for name, label in ((LOGISTIC_MODEL, "the logistic comparator"), (UNTUNED_HGB, "an untuned HistGradientBoosting")):
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


def champion_configuration(metadata: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]] | None:
    """The champion's procedure as recorded in its bundle (family, hyperparameters), if refittable."""
    from models.candidates import CANDIDATES

    params = metadata.get("params")
    if kind not in CANDIDATES or not isinstance(params, dict):
        return None
    return kind, dict(params)
