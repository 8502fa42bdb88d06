"""Does monitoring raise alarms at the rate it states, over a year of weekly runs? (issue 23, (c))

Everything here runs the service's own monitoring code (`pipeline.monitor.run.one_per_patient`,
`due_outcomes`, `pipeline.monitor.statistics.drift_tests`, `decision_limits`, `sequential_charts`) on the
synthetic generator's patients; the "model" is the generator's true risk, so without drift the
model is calibrated and its patients look like its development patients.

1. Drift without drift, weekly runs: each week W new patients (generator), each asked 1-3 times
   (an answer, its explanation, a chart opening), the audit rows through `one_per_patient`, then
   `drift_tests` at alpha / 52 with the effect-size floors. Reported: runs with any alarm, and
   years (52 runs) with any alarm. Beside it, the design before issue 23 (every answer a patient,
   alpha 0.05 a run, no floor) on the same weeks.
2. The issue's case: 150 patients without drift, each asked three times, 20 runs, both designs.
3. The outcome alarm (risk-adjusted CUSUM charts) over a year of weekly runs: W patients a week,
   each outcome reported 1-3 times (deduplicated by `due_outcomes`), due 30 days after the answer.
   In control: runs and years with any signal. Drifts from week 0 of a year (the chart fresh) and
   from week 26 (after half a year in control): (i) doubled prevalence odds, (ii) a halved
   calibration slope (about the development patients' mean logit). Reported: power within the
   year after the change, and the delay to the signal in patients with outcomes after the change
   and in weeks including the 30-day wait for outcomes to be due.

    .venv/bin/python -m bench.monitoring_simulation [--years 30] [--old-years 5] [--cusum-years 1000]
        [--power-years 200] [--weekly 10] [--cusum-weekly 5 10 20]

Writes bench/monitoring_simulation.json and .md (`--from-json` rewrites the .md only).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REFERENCE_N, REFERENCE_SEED = 1500, 1
FOLLOW_UP_WEEKS = 30 / 7
START = datetime(2026, 1, 5, tzinfo=UTC)


def _reference() -> dict[str, Any]:
    from pipeline.data.synthetic import generate_cohort
    from pipeline.monitor.statistics import reference_summary

    dev = generate_cohort(REFERENCE_N, REFERENCE_SEED)
    return reference_summary(dev, dev["p_true"].to_numpy(float), {})


def _audit_rows(df: pd.DataFrame, asks: np.ndarray, week: int, with_id: np.ndarray, offset: int) -> list[dict]:
    """The audit rows of one week's patients: patient i answered asks[i] times, hours apart."""
    from core.contract import FEATURES

    rows: list[dict[str, Any]] = []
    records = df[[f.name for f in FEATURES]].to_dict("records")
    for i, (rec, risk) in enumerate(zip(records, df["p_true"])):
        inputs = json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()})
        for k in range(int(asks[i])):
            rows.append({"id": offset + len(rows), "time": START + timedelta(weeks=week, hours=i + k),
                         "model_name": "m", "model_version": "1", "risk": float(risk), "inputs": inputs,
                         "patient_hash": f"w{week}-p{i}" if with_id[i] else None})
    return rows


def drift_year(reference: dict[str, Any], weekly: int, year: int, design: str) -> list[bool]:
    """52 weekly runs of one simulated year without drift; each run's "any alarm"."""
    from pipeline.data.synthetic import generate_cohort
    from pipeline.monitor.run import one_per_patient
    from pipeline.monitor.statistics import HORIZON_RUNS, drift_tests

    rng = np.random.default_rng(10_000 + year)
    alarms = []
    for week in range(52):
        df = generate_cohort(weekly, 1_000_000 + 1000 * year + week)
        asks = rng.integers(1, 4, weekly)
        rows = _audit_rows(df, asks, week, rng.random(weekly) < 0.5, 0)
        if design == "new":
            patients = one_per_patient(rows, "m", "1")
            result = drift_tests(reference, patients.frame, patients.risk, alpha=0.05 / HORIZON_RUNS, seed=week)
        else:  # before issue 23: every answer an observation, alpha 0.05 a run, no effect floor
            frame = pd.DataFrame([json.loads(r["inputs"]) for r in rows])
            risk = np.array([r["risk"] for r in rows])
            result = drift_tests(reference, frame, risk, alpha=0.05, seed=week, psi_floor=0.0, smd_floor=0.0,
                                 n_mc=19_999)  # its Monte Carlo size then
        alarms.append(bool(result["alarm"].any()))
    return alarms


def issue_case(reference: dict[str, Any], runs: int) -> dict[str, int]:
    """150 no-drift patients, each asked three times: runs with any alarm, both designs."""
    from pipeline.data.synthetic import generate_cohort
    from pipeline.monitor.run import one_per_patient
    from pipeline.monitor.statistics import HORIZON_RUNS, drift_tests

    out = {"new": 0, "old": 0, "new_per_run_alpha_0.05": 0}
    for s in range(runs):
        df = generate_cohort(150, 50_000 + s)
        rows = _audit_rows(df, np.full(150, 3), 0, np.zeros(150, bool), 0)
        patients = one_per_patient(rows, "m", "1")
        out["new"] += bool(drift_tests(reference, patients.frame, patients.risk, alpha=0.05 / HORIZON_RUNS,
                                       seed=s)["alarm"].any())
        out["new_per_run_alpha_0.05"] += bool(drift_tests(reference, patients.frame, patients.risk, alpha=0.05,
                                                          seed=s)["alarm"].any())
        frame = pd.DataFrame([json.loads(r["inputs"]) for r in rows])
        out["old"] += bool(drift_tests(reference, frame, np.array([r["risk"] for r in rows]), alpha=0.05, seed=s,
                                       psi_floor=0.0, smd_floor=0.0, n_mc=19_999)["alarm"].any())
    return out


def drift_power(reference: dict[str, Any], weekly: int, runs: int, shift: str) -> dict[str, Any]:
    """Runs of `weekly` new patients from a shifted site, each asked 1-3 times: how often the shifted
    feature alarms (this design at alpha 0.05/52 with the floors; and at alpha 0.05 a run, for scale)."""
    from pipeline.data.synthetic import generate_cohort
    from pipeline.monitor.run import one_per_patient
    from pipeline.monitor.statistics import HORIZON_RUNS, drift_tests

    rng = np.random.default_rng(31_000 + weekly)
    found = {"alpha_0.05_over_52_runs": 0, "alpha_0.05_a_run": 0}
    for s in range(runs):
        df = generate_cohort(weekly, 3_000_000 + 100 * weekly + s)
        if shift == "blasts_x2":
            feature = "marrow_blasts_pct"
            df[feature] = (df[feature] * 2).clip(upper=100)
        else:  # "blasts_x1.5"
            feature = "marrow_blasts_pct"
            df[feature] = (df[feature] * 1.5).clip(upper=100)
        rows = _audit_rows(df, rng.integers(1, 4, weekly), 0, np.ones(weekly, bool), 0)
        patients = one_per_patient(rows, "m", "1")
        for key, alpha in (("alpha_0.05_over_52_runs", 0.05 / HORIZON_RUNS), ("alpha_0.05_a_run", 0.05)):
            result = drift_tests(reference, patients.frame, patients.risk, alpha=alpha, seed=s)
            found[key] += bool(result.loc[result["feature"] == feature, "alarm"].any())
    return {"weekly": weekly, "runs": runs, "shift": shift, **found}


def _year_outcomes(reference: dict[str, Any], weekly: int, seed: int, weeks: int, change_week: int | None,
                   drift: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stretch of weekly patients with outcomes: (y, p, week of answer), in the order observed,
    after `due_outcomes` removed the duplicate reports (each outcome reported 1-3 times)."""
    from pipeline.monitor.run import due_outcomes
    from pipeline.monitor.statistics import _logit, reference_centre, sample_reference_risk

    rng = np.random.default_rng(seed)
    n = weekly * weeks
    p = sample_reference_risk(reference, n, rng)
    week = np.repeat(np.arange(weeks), weekly)
    lp = _logit(p)
    if drift is not None and change_week is not None:
        after = week >= change_week
        if drift == "doubled_odds":
            lp = np.where(after, lp + np.log(2.0), lp)
        elif drift == "halved_slope":
            c = reference_centre(reference)
            lp = np.where(after, c + 0.5 * (lp - c), lp)
    y = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    answered = [START + timedelta(weeks=int(w), minutes=int(m)) for w, m in zip(week, rng.integers(0, 10_000, n))]
    labelled = []
    for i in range(n):
        observed = (answered[i] + timedelta(days=int(rng.integers(20, 41)))).date()
        for k in range(int(rng.integers(1, 4))):  # the outcome reported 1-3 times (once per answer)
            labelled.append({"id": i, "model_name": "m", "model_version": "1", "time": answered[i], "risk": p[i],
                             "y": int(y[i]), "observed_on": observed, "patient_hash": f"p{i}", "inputs": "{}"})
    due = due_outcomes(labelled, "m", "1", START + timedelta(weeks=weeks + 10))
    order = np.array([r["id"] for r in due])
    return y[order], p[order], week[order]


def cusum_study(reference: dict[str, Any], weekly: int, years: int, power_years: int) -> dict[str, Any]:
    from pipeline.monitor.statistics import CusumDesign, decision_limits, sequential_charts

    design = CusumDesign()
    limits = decision_limits(reference, design)
    out: dict[str, Any] = {"weekly": weekly, "limits": limits, "design": {
        "odds_up": design.odds_up, "odds_down": design.odds_down, "slope": design.slope,
        "horizon": design.horizon, "alpha": design.alpha, "sims": design.sims}}
    # in control: a year of weekly runs; a run "alarms" if a chart first crosses h on its new outcomes
    years_alarmed, runs_alarmed, runs = 0, 0, 0
    for s in range(years):
        y, p, week = _year_outcomes(reference, weekly, 7_000_000 + s, 52, None, None)
        charts = sequential_charts(y, p, reference, design, limits)
        first = min((at for at in charts.signals.values() if at is not None), default=None)
        if first is not None:
            years_alarmed += 1
            runs_alarmed += 1
            runs += int(week[first - 1] + FOLLOW_UP_WEEKS) + 1
        else:
            runs += 52
    out["in_control"] = {"years": years, "years_with_any_signal": years_alarmed,
                         "year_false_alarm_rate": years_alarmed / years,
                         "runs": runs, "runs_with_a_signal": runs_alarmed, "run_false_alarm_rate": runs_alarmed / runs}
    for drift, chart in (("doubled_odds", "odds_up"), ("halved_slope", None)):
        for change in (0, 26):
            found, delays_patients, delays_weeks = 0, [], []
            which: dict[str, int] = {}
            for s in range(power_years):
                y, p, week = _year_outcomes(reference, weekly, 8_000_000 + 97 * s + change, change + 52, change, drift)
                charts = sequential_charts(y, p, reference, design, limits)
                signals = {k: v for k, v in charts.signals.items() if v is not None}
                if not signals:
                    continue
                name, at = min(signals.items(), key=lambda kv: kv[1])
                if week[at - 1] < change:  # a false alarm before the change: not a detection
                    continue
                found += 1
                which[name] = which.get(name, 0) + 1
                delays_patients.append(int(np.sum(week[:at] >= change)))
                delays_weeks.append(float(week[at - 1] - change + FOLLOW_UP_WEEKS))
            out[f"{drift}_from_week_{change}"] = {
                "years": power_years, "power_within_a_year": found / power_years, "first_chart": which,
                "median_delay_patients": float(np.median(delays_patients)) if delays_patients else None,
                "median_delay_weeks": float(np.median(delays_weeks)) if delays_weeks else None,
                "q90_delay_weeks": float(np.quantile(delays_weeks, 0.9)) if delays_weeks else None}
    return out


def figure(path: Path) -> None:
    """The README's picture: the three charts on 600 patients with outcomes, the odds doubled from
    the 300th (generator risks, seed 11), drawn by the report's own chart function."""
    from pipeline.monitor.run import _cusum_chart
    from pipeline.monitor.statistics import sequential_charts

    reference = _reference()
    y, p, week = _year_outcomes(reference, 10, 11, 60, 30, "doubled_odds")
    _cusum_chart(sequential_charts(y, p, reference), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weekly", type=int, default=10, help="new patients a week (drift study)")
    parser.add_argument("--years", type=int, default=30, help="simulated years of the new drift design")
    parser.add_argument("--old-years", type=int, default=5, help="simulated years of the design before issue 23")
    parser.add_argument("--issue-runs", type=int, default=20)
    parser.add_argument("--cusum-weekly", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--cusum-years", type=int, default=1000, help="in-control years per weekly volume")
    parser.add_argument("--power-years", type=int, default=200, help="years per drift and volume")
    parser.add_argument("--from-json", action="store_true")
    parser.add_argument("--figure", type=Path, help="only draw the README's chart to this PNG")
    parser.add_argument("--drift-power-only", action="store_true",
                        help="add the drift tests' power on a shifted site to the existing JSON")
    parser.add_argument("--power-runs", type=int, default=40)
    args = parser.parse_args(argv)
    if args.figure:
        figure(args.figure)
        return
    path = HERE / "monitoring_simulation.json"
    if args.drift_power_only:
        started = time.time()
        result = json.loads(path.read_text())
        reference = _reference()
        result["drift_power"] = [drift_power(reference, weekly, args.power_runs, shift)
                                 for weekly in (10, 30) for shift in ("blasts_x1.5", "blasts_x2")]
        result["drift_power_seconds"] = round(time.time() - started)
        path.write_text(json.dumps(result, indent=2))
    elif args.from_json:
        result = json.loads(path.read_text())
    else:
        started = time.time()
        reference = _reference()
        result = {"command": "python -m bench.monitoring_simulation " + " ".join(argv or []),
                  "reference": {"n": REFERENCE_N, "seed": REFERENCE_SEED}, "drift": {}, "cusum": []}
        for design, years in (("new", args.years), ("old", args.old_years)):
            runs = [drift_year(reference, args.weekly, year, design) for year in range(years)]
            flat = [a for year in runs for a in year]
            result["drift"][design] = {"weekly": args.weekly, "years": years, "runs": len(flat),
                                       "runs_with_any_alarm": int(sum(flat)),
                                       "years_with_any_alarm": int(sum(any(y) for y in runs)),
                                       "seeds": f"years 0-{years - 1} (generator seeds 1,000,000 + 1000 year + week)"}
            print(design, result["drift"][design], flush=True)
        result["issue_case"] = {"runs": args.issue_runs, **issue_case(reference, args.issue_runs)}
        print(result["issue_case"], flush=True)
        for weekly in args.cusum_weekly:
            result["cusum"].append(cusum_study(reference, weekly, args.cusum_years, args.power_years))
            print(json.dumps(result["cusum"][-1]), flush=True)
        result["seconds"] = round(time.time() - started)
        path.write_text(json.dumps(result, indent=2))
    (HERE / "monitoring_simulation.md").write_text(report(result))


def _rate(k: int, n: int) -> str:
    from scipy.stats import beta

    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    return f"{k}/{n} ({100 * k / n:.2g}%; 95% CI {100 * lo:.2g}-{100 * hi:.2g}%)"


def report(r: dict[str, Any]) -> str:
    d = r["drift"]
    lines = ["# Monitoring: false alarms and detection over a year of weekly runs (issue 23)", "",
             f"Command: `{r['command'].strip()}` ({r.get('seconds', '?')} s). Generator patients; the model is the",
             "generator's true risk, so without drift nothing should alarm. Reference: "
             f"{r['reference']['n']} development patients (seed {r['reference']['seed']}).", "",
             "## Drift tests without drift, each patient asked 1-3 times", "",
             "| design | patients a week | runs with any alarm | years (52 runs) with any alarm |",
             "|---|---|---|---|"]
    for name, label in (("new", "patients counted once, alpha 0.05/52 a run, PSI/SMD floor 0.1"),
                        ("old", "before: every answer counted, alpha 0.05 a run, no floor")):
        x = d[name]
        lines.append(f"| {label} | {x['weekly']} | {_rate(x['runs_with_any_alarm'], x['runs'])} | "
                     f"{_rate(x['years_with_any_alarm'], x['years'])} |")
    if r.get("drift_power"):
        lines += ["", "Power on a shifted site (marrow blasts multiplied; new patients a run, each asked 1-3 times; "
                  f"`--drift-power-only`, {r.get('drift_power_seconds', '?')} s): runs in which the shifted feature alarms.",
                  "", "| patients a run | shift | this design (0.05 over 52 runs, floors) | at alpha 0.05 a run |",
                  "|---|---|---|---|"]
        for x in r["drift_power"]:
            lines.append(f"| {x['weekly']} | {x['shift']} | {_rate(x['alpha_0.05_over_52_runs'], x['runs'])} | "
                         f"{_rate(x['alpha_0.05_a_run'], x['runs'])} |")
    ic = r["issue_case"]
    lines += ["", f"The issue's case (150 patients without drift, each asked three times, {ic['runs']} runs): "
              f"runs with any alarm {ic['old']}/{ic['runs']} before, {ic['new']}/{ic['runs']} now "
              f"({ic['new_per_run_alpha_0.05']}/{ic['runs']} counting patients once but still at alpha 0.05 a run).", "",
              "## The outcome alarm: risk-adjusted CUSUM charts", ""]
    first = r["cusum"][0]
    des = first["design"]
    lines += [f"Charts against odds ratio {des['odds_up']} and {des['odds_down']} and calibration slope {des['slope']};"
              f" h set by {des['sims']} simulated in-control horizons of {des['horizon']} patients with outcomes so that"
              f" any chart signals with probability {des['alpha']}: h = "
              + ", ".join(f"{k} {v:.2f}" for k, v in first["limits"].items()) + ".", "",
              "| patients a week | in control: runs with a signal | in control: years with any signal |",
              "|---|---|---|"]
    for c in r["cusum"]:
        ic = c["in_control"]
        lines.append(f"| {c['weekly']} | {_rate(ic['runs_with_a_signal'], ic['runs'])} | "
                     f"{_rate(ic['years_with_any_signal'], ic['years'])} |")
    lines += ["", "Detection (power within a year after the change; delay to the signal, median and 90th percentile,"
              " in weeks including the 30 days before an outcome is due; median patients with outcomes after the"
              " change):", "",
              "| patients a week | drift | change at week | power | median delay (weeks) | 90th pct (weeks) |"
              " median patients | first chart |", "|---|---|---|---|---|---|---|---|"]
    for c in r["cusum"]:
        for drift in ("doubled_odds", "halved_slope"):
            for change in (0, 26):
                x = c[f"{drift}_from_week_{change}"]
                f = (lambda v, spec: "-" if v is None else format(v, spec))
                lines.append(f"| {c['weekly']} | {drift.replace('_', ' ')} | {change} | {x['power_within_a_year']:.1%}"
                             f" ({x['years']} years) | {f(x['median_delay_weeks'], '.1f')} | "
                             f"{f(x['q90_delay_weeks'], '.1f')} | {f(x['median_delay_patients'], '.0f')} | "
                             f"{', '.join(f'{k} {v}' for k, v in x['first_chart'].items())} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
