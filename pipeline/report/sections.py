"""What the validation report and the model card both show: the evidence's tables and blocks
(document blocks, pipeline.report.document), built once so the two documents say the same thing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from core import style
from core.contract import OUTCOMES
from pipeline.evidence import (
    EASIX,
    M_EASIX,
    MODEL,
    NET_BENEFIT_REPORTED,
    ORACLE,
    TREAT_ALL,
    TREAT_NONE,
    Evidence,
    learning_curve_summary,
)
from pipeline.report.document import Block, ci, rounded, lines, num, pct, prose

_name = style.name


def outcome_text(outcome: str) -> str:
    o = OUTCOMES.get(outcome)
    return f"{o.description} ({outcome})" if o else outcome


def discrimination_table(ev: Evidence) -> Block:
    rows = []
    for name, d in ev.discrimination.items():
        rows.append([_name(name), ci(d, "auroc"), ci(d, "auprc"), num(d.get("prevalence"))])
    return ("table", ["score", "AUROC (95% CI)", "AUPRC (95% CI)", "prevalence (AUPRC no-skill)"], rows)


def comparison_table(ev: Evidence) -> Block:
    rows = [[f"model minus {_name(name)}", rounded("auroc", c["difference"]),
             f"{rounded('auroc', c['ci_low'])} to {rounded('auroc', c['ci_high'])}",
             pct(c.get("share_model_better"))] for name, c in ev.comparisons.items()]
    return ("table", ["AUROC difference", "estimate", "95% paired bootstrap CI", "resamples with model better"], rows)


def calibration_table(ev: Evidence) -> Block:
    rows = []
    for name, c in ev.calibration.items():
        rows.append([_name(name)] + [rounded(k, c.get(k)) for k in ("calibration_in_the_large", "observed_expected_ratio")]
                    + [ci(c, "calibration_intercept"), ci(c, "calibration_slope")]
                    + [rounded(k, c.get(k)) for k in ("ici", "e50", "e90")] + [ci(c, "brier"), rounded("scaled_brier", c.get("scaled_brier"))])
    return ("table", ["probability", "CITL (mean p - mean y)", "O/E", "intercept (95% CI)", "slope (95% CI)",
                      "ICI", "E50", "E90", "Brier (95% CI)", "scaled Brier"], rows)


def net_benefit_table(ev: Evidence, thresholds: Iterable[float] = (0.05, 0.10, 0.15, 0.20, 0.30)) -> Block:
    names = [MODEL] + [n for n in ev.predictions if n != MODEL] + [TREAT_ALL, TREAT_NONE]
    rows = [[pct(t, 0)] + [rounded("net_benefit", ev.net_benefit_at(n, t)) for n in names] for t in thresholds]
    return ("table", ["threshold"] + [_name(n) for n in names], rows)


def thresholds_table(ev: Evidence) -> Block:
    rows = [[r["name"], num(r["threshold"], 4), r["n_at_or_above"], num(r["sensitivity"]), num(r["specificity"]),
             num(r["ppv"]), num(r["npv"])] for r in ev.thresholds.to_dict(orient="records")]
    return ("table", ["threshold", "risk >=", "patients at or above", "sensitivity", "specificity", "PPV", "NPV"], rows)


def risk_group_table(ev: Evidence) -> Block:
    rows = [[r["group"], r["n"], r["events"], pct(r["observed_risk"]), pct(r["mean_predicted"])]
            for r in ev.risk_groups.to_dict(orient="records")]
    return ("table", ["risk group", "patients", "events", "observed risk", "mean predicted risk"], rows)


def subgroup_table(ev: Evidence) -> Block:
    rows, flags = [], []
    for r in ev.subgroups.to_dict(orient="records"):
        rows.append([r["group_label"], r["level_label"], r["n"], r["events"], ci(r, "auroc"),
                     rounded("calibration_in_the_large", r["calibration_in_the_large"]), rounded("brier", r["brier"]),
                     ("SMALL: " + r["small_reason"]) if r["small"] else ""])
        flags.append(bool(r["small"]))
    return ("table", ["subgroup", "level", "n", "events", "AUROC (95% CI)", "CITL (mean p - mean y)", "Brier", "flag"],
            rows, flags)


def sample_size_blocks(ev: Evidence) -> list[Block]:
    s = ev.sample_size
    if s is None:
        return [("p", prose("evidence").no_development_data())]
    blocks: list[Block] = [("table", ["quantity", "value"], [
        ["development patients / events", f"{s['n']} / {s['events']} (prevalence {pct(s['prevalence'])})"],
        ["candidate predictor parameters", s["n_params"]],
        ["events per candidate parameter (EPP)", num(s["events_per_parameter"], 1)],
        ["anticipated Cox-Snell R2", f"{num(s['anticipated_r2_cs'])} from {s['anticipated_r2_source']}"],
        ["max Cox-Snell R2 at this prevalence", num(s["max_r2_cs"])],
        ["criterion 1: shrinkage >= 0.9", f"n >= {s['n_required_shrinkage']}"],
        ["criterion 2: Nagelkerke R2 optimism <= 0.05", f"n >= {s['n_required_optimism']}"],
        ["criterion 3: overall risk within +/- 0.05", f"n >= {s['n_required_intercept']}"],
        ["minimum n / events / EPP", f"{s['n_required']} / {math.ceil(s['events_required'])} / {num(s['epp_required'], 1)}"],
        ["expected shrinkage at the actual n", num(s["expected_shrinkage"])],
        ["adequate", "yes" if s["adequate"] else "NO"],
    ])]
    if s["warning"]:
        blocks.append(("note", "WARNING: " + s["warning"]))
    return blocks


def learning_curve_blocks(ev: Evidence, image: Path | None) -> list[Block]:
    lc = ev.learning_curve
    if lc is None or not len(lc):
        return [("p", prose("evidence").not_computed())]
    summary = learning_curve_summary(lc)
    wide = summary.pivot_table(index="size", columns="model", values="auroc", sort=False)
    events = summary.groupby("size")["events_train"].first()
    repeats = int(summary["repeats"].max())
    cols = [c for c in wide.columns if c != ORACLE] + ([ORACLE] if ORACLE in wide.columns else [])
    trained = [c for c in cols if c not in (ORACLE, EASIX, M_EASIX)]
    rows = []
    for size in wide.index:
        best = max(trained, key=lambda c: wide.loc[size, c]) if trained else None
        runner = max((wide.loc[size, c] for c in trained if c != best), default=np.nan)
        verdict = f"{_name(best)} by {rounded('auroc', wide.loc[size, best] - runner)}" if best is not None else "-"
        rows.append([int(size), num(events[size], 0)] + [rounded("auroc", wide.loc[size, c]) for c in cols] + [verdict])
    fitted = "once" if repeats == 1 else f"on {repeats} independent training cohorts (mean shown)"
    blocks: list[Block] = [
        ("p", prose("evidence").learning_curve(fitted)),
        ("table", ["training patients", "training events"] + [_name(c) for c in cols] + ["best fitted model"], rows),
    ]
    if image is not None:
        blocks.append(("img", "learning curve", str(image)))
    return blocks


def headline(ev: Evidence) -> list[str]:
    """The summary in a few sentences: the model's discrimination, calibration, comparisons, net benefit."""
    d = ev.discrimination[MODEL]
    c = ev.calibration[MODEL]
    items = [
        f"AUROC {ci(d, 'auroc')}; AUPRC {ci(d, 'auprc')} (prevalence {num(d['prevalence'])}); "
        f"n = {d['n']}, events = {d['events']}; {ev.n_boot} bootstrap resamples.",
        f"Calibration: slope {ci(c, 'calibration_slope')}, intercept {ci(c, 'calibration_intercept')}, "
        f"calibration-in-the-large {rounded('calibration_in_the_large', c['calibration_in_the_large'])}, "
        f"ICI {rounded('ici', c['ici'])}; Brier {rounded('brier', c['brier'])}, scaled Brier {rounded('scaled_brier', c['scaled_brier'])}.",
    ]
    for name, cmp_ in ev.comparisons.items():
        items.append(f"AUROC model minus {_name(name)}: {rounded('auroc', cmp_['difference'])} "
                     f"({rounded('auroc', cmp_['ci_low'])} to {rounded('auroc', cmp_['ci_high'])}).")
    if ev.y_test is not None:
        nb = ", ".join(f"{pct(t, 0)}: {rounded('net_benefit', ev.net_benefit_at(MODEL, t))} (treat all "
                       f"{rounded('net_benefit', ev.net_benefit_at(TREAT_ALL, t))})" for t in NET_BENEFIT_REPORTED)
        items.append(f"Net benefit at thresholds {nb}.")
    if ORACLE in ev.discrimination:
        items.append(f"Oracle AUROC (true synthetic probability): {ci(ev.discrimination[ORACLE], 'auroc')}.")
    return items + better_than_model(ev)


def better_than_model(ev: Evidence) -> list[str]:
    """Say it in words when another fitted model or score discriminates better than the model."""
    d, c = ev.discrimination[MODEL], ev.calibration[MODEL]
    out = []
    for name, other in ev.discrimination.items():
        if name in (MODEL, ORACLE) or not (math.isfinite(other.get("auroc", math.nan)) and other["auroc"] > d["auroc"]):
            continue
        oc = ev.calibration.get(name) or {}
        brier = ((rounded("brier", oc["brier"]), rounded("brier", c["brier"])) if math.isfinite(float(oc.get("brier", math.nan)))
                 else None)
        out.append(prose("evidence").better_than_model(_name(name), rounded("auroc", other["auroc"]), rounded("auroc", d["auroc"]),
                                                       brier))
    return out


def resampled(ev: Evidence) -> bool:
    return ev.validation is not None and ev.validation.get("design") == "repeated_cv"


def evaluation_text(ev: Evidence, d: Mapping[str, Any], synthetic: bool) -> Block:
    return ("p", prose("evidence").evaluation(resampled(ev), d["n"], d["events"], pct(d["prevalence"]), synthetic))


def validation_blocks(ev: Evidence) -> list[Block]:
    """The design (split or repeated cross-validation), why, and the estimates the gate used."""
    v = ev.validation
    if not v:
        return [("p", prose("evidence").external_validation())]
    est = v.get("estimates", {})
    rows = [[_name(k), ci(est, k)]
            for k in ("auroc", "calibration_slope", "calibration_intercept", "brier") if k in est]
    if "auroc_minus_m_easix" in est:
        rows.append(["AUROC minus m-EASIX", ci(est, "auroc_minus_m_easix")])
    blocks: list[Block] = [
        ("p", prose("evidence").design(v["design"], v["reason"], v["evaluated_on"])),
        ("table", ["estimate used by the quality gate and the champion comparison", "value (95% CI)"], rows),
    ]
    rs = v.get("resampling")
    if rs:
        names = list(rs["cross_validated"])
        head = ["model", "apparent AUROC", "cross-validated AUROC", "optimism", "SD over repeats",
                "cross-validated slope"]
        table = [[_name(n), rounded("auroc", rs["apparent"].get(n, {}).get("auroc")), rounded("auroc", rs["cross_validated"][n]["auroc"]),
                  rounded("auroc", rs["optimism"][n]["auroc"]), rounded("auroc", rs["spread_over_repeats"][n]["auroc"]),
                  rounded("calibration_slope", rs["cross_validated"][n]["calibration_slope"])] for n in names]
        blocks += [
            ("p", prose("evidence").resampling(rs["repeats"], rs["folds"], f"{rs['seconds']:.0f}")),
            ("table", head, table),
        ]
    return blocks


def direction_blocks(ev: Evidence) -> list[Block]:
    d = ev.directions
    if d is None or not len(d):
        return [("p", prose("evidence").not_computed())]
    free = "unconstrained_direction" in d.columns
    rows = [[r.feature, num(r.low, 3), num(r.high, 3), num(r.risk_low, 3), num(r.risk_high, 3),
             num(r.effect, 4), r.model_direction,
             *([r.unconstrained_direction] if free else []),
             # a logistic model takes no monotone constraint: the published direction is shown, not enforced
             r.published_direction + ("" if r.enforced or r.published_direction.startswith("none") else
                                      " (not enforced)"),
             "CONTRADICTION" if r.contradiction else (
                 "constraint against these data" if free and r.constraint_against_data else (r.note or ""))]
            for r in d.itertuples()]
    n_bad = int(d["contradiction"].sum())
    blocks: list[Block] = [
        ("p", prose("evidence").directions()),
        ("table", ["feature", "low", "high", "risk at low", "risk at high", "effect", "in the model",
                   *(["fitted without constraints"] if free else []), "baseline evidence (enforced unless said)", "flag"], rows),
    ]
    if n_bad:
        blocks.append(("note", prose("evidence").contradictions(n_bad)))
    return blocks


def instability_blocks(instability: Mapping[str, Any] | None) -> list[Block]:
    """The instability analysis (pipeline.train.instability) of the model, if it has one: a paragraph, the
    figures by risk group, and its warning."""
    if not instability:
        return []
    i = instability
    text = prose("model_card").instability(
        i["models"], i["n_dev"], num(i["mape"], 3), num(i["mean_risk"], 3), num(i["median_interval_width"], 3),
        pct(i["group_change"]))
    rows = [[g, str(v["patients"]), num(v["mape"], 3), num(v["median_width"], 3), pct(v["group_change"])]
            for g, v in i["by_group"].items()]
    blocks: list[Block] = [("p", "Prediction instability (bootstrap models of the development data):"),
                           ("ul", lines(text)),
                           ("table", ["risk group", "patients", "MAPE", "median 95% interval width",
                                      "group changes"], rows)]
    if i.get("note"):
        blocks.append(("note", str(i["note"])))
    return blocks


def transport_blocks(transport: Mapping[str, Any] | None) -> list[Block]:
    """How the model transports to a new centre (internal-external cross-validation, when the training
    validated by centre; `pipeline.report.forest_plot.transport_summary`): the sentence, the pooled
    table and one forest plot per measure, each with the pooled estimate, its CI and the 95% PI."""
    if not transport:
        return []
    from pipeline.report.forest_plot import CAPTION, LABELS

    rows = [[LABELS.get(p["measure"], (p["measure"],))[0], str(p["k"]), num(p["estimate"]),
             f"{num(p['ci_low'])} to {num(p['ci_high'])}", f"{num(p['pi_low'])} to {num(p['pi_high'])}",
             num(p["tau2"], 4), f"{num(p['i2'], 0)}%"] for p in transport["pooled"]]
    blocks: list[Block] = [("p", str(transport["sentence"])),
                           ("table", ["measure", "centres", "pooled", "95% CI", "95% prediction interval (new centre)",
                                      "tau2", "I2"], rows)]
    for measure, path in transport["plots"].items():
        blocks.append(("img", f"forest plot: {LABELS.get(measure, (measure,))[0]} by centre", str(path)))
    blocks.append(("p", CAPTION))
    return blocks
