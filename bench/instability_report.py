"""The Markdown report of `bench/instability.py` (kept apart: the measuring and the writing)."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench.instability import BATCH_N, FRESH_N, FRESH_SEED, TEST_N, TEST_SEED


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _short(n: int, part: list[dict]) -> str:
    seeds = ", ".join(f"{r['coverage_limit']:.0%}" for r in part)
    return (f"n = {n:,}: MAPE {_mean(part, 'mape_dev'):.3f}, median width {_mean(part, 'median_width_dev'):.3f} "
            f"(test {_mean(part, 'median_width_test'):.3f}), coverage of the limit "
            f"{_mean(part, 'coverage_limit'):.0%} (per seed {seeds})")


def before_after(before: dict, rows: list[dict]) -> list[str]:
    """Per size, an earlier run's figures beside this run's (means over each run's own seeds)."""
    b_set = before["settings"]
    out = ["## Before / after", "",
           f"Before: {before.get('finished', 'an earlier run')}, n_iter={b_set.get('n_iter')}, "
           f"{b_set.get('search_cv_folds', b_set.get('cv_folds'))}-fold search, tree families only "
           "(bench/instability_before_issue23.json). After: this run. Means over the generator seeds "
           "(seeds: how many); coverage is over the 2,000 test patients of each seed.", "",
           "| n | seeds before / after | chosen before / after | coverage of the limit before / after | "
           "coverage of p_true before / after | median 95% width (test) before / after | "
           "median 95% width (dev) before / after |",
           "|---|---|---|---|---|---|---|"]
    for n in sorted({r["size"] for r in before["cohorts"]} | {r["size"] for r in rows}):
        b = [r for r in before["cohorts"] if r["size"] == n]
        a = [r for r in rows if r["size"] == n]

        def pair(key: str, fmt: str) -> str:
            return " / ".join(format(_mean(part, key), fmt) if part else "-" for part in (b, a))

        chosen = " / ".join(", ".join(sorted({r["chosen"].replace("hist_gradient_boosting", "hgb") for r in part}))
                            or "-" for part in (b, a))
        out.append(f"| {n:,} | {len(b)} / {len(a)} | {chosen} | {pair('coverage_limit', '.1%')} | "
                   f"{pair('coverage_p_true', '.1%')} | {pair('median_width_test', '.3f')} | "
                   f"{pair('median_width_dev', '.3f')} |")
    return out + [""]


def report(rows: list[dict], spd: dict | None, args: argparse.Namespace, total_s: float,
           finished: str | None = None, before: dict | None = None) -> str:
    sizes = sorted({r["size"] for r in rows})
    out = [
        "# How sure is 18%? Development instability and the served interval (issue 17)", "",
        f"Generator cohorts, tuned and fitted as `make train` does (every family tuned with n_iter="
        f"{args.n_iter}, {getattr(args, 'search_cv_folds', None) or args.cv_folds}-fold search CV, procedure seed "
        f"{args.seed}; the family with the lowest CV log-loss; thresholds from the out-of-fold "
        f"risks), then B = {args.models} bootstrap models of the chosen configuration, each calibrated on its "
        f"{args.cv_folds}-fold out-of-fold margins as training's instability analysis does "
        "(`pipeline.train.instability.bootstrap_ensemble`). Development = the whole cohort (every size here is "
        "validated by repeated CV in training, so training fits on all patients too; see `design`). "
        f"Test = {TEST_N:,} fresh generator patients (seed {TEST_SEED}). Limit = the same configuration "
        f"(family and parameters, Platt on out-of-fold margins, fit on all; not re-tuned) fitted on {FRESH_N:,} "
        f"fresh generator patients (seed {FRESH_SEED}): the risk a much bigger development sample would reach "
        "for each test patient. Coverage = share of test patients whose limit risk lies inside the small "
        "model's 95% interval (2.5th-97.5th percentile of the B bootstrap models' risks).",
        "",
        f"Run: {finished or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, n_jobs {args.n_jobs}, "
        f"total {total_s / 60:.1f} min"
        + (f" ({args.runs})" if getattr(args, "runs", None) else "")
        + ". The machine is shared with other jobs: the load average is recorded "
        "beside every figure, and the timings are only indicative.",
        "",
        "## Per size (means over generator seeds)", "",
        "| n | seeds | chosen | mean risk | MAPE (dev) | MAPE (test) | median 95% width (dev) | median 95% width (test) "
        "| P(group change) dev / test | coverage of the limit | limit below / above | coverage of p_true "
        "| mean abs(final - limit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        part = [r for r in rows if r["size"] == n]
        chosen = ", ".join(sorted({r["chosen"].replace("hist_gradient_boosting", "hgb") for r in part}))
        out.append(
            f"| {n:,} | {len(part)} | {chosen} | {_mean(part, 'mean_risk_dev'):.3f} | {_mean(part, 'mape_dev'):.4f} | "
            f"{_mean(part, 'mape_test'):.4f} | {_mean(part, 'median_width_dev'):.3f} | "
            f"{_mean(part, 'median_width_test'):.3f} | {_mean(part, 'group_change_dev'):.1%} / "
            f"{_mean(part, 'group_change_test'):.1%} | {_mean(part, 'coverage_limit'):.1%} | "
            f"{_mean(part, 'limit_below'):.1%} / {_mean(part, 'limit_above'):.1%} | "
            f"{_mean(part, 'coverage_p_true'):.1%} | {_mean(part, 'mean_abs_final_minus_limit'):.4f} |")
    if before:
        out += [""] + before_after(before, rows)[:-1]
    out += ["", "In short (means over seeds; the per-cohort table shows how much the chosen configuration, and "
            "with it the width, varies between seeds of one size): "
            + "; ".join(_short(n, [r for r in rows if r["size"] == n]) for n in sizes) + "."]
    out += ["", "## Per cohort", "",
            "| n | generator seed | events | design | chosen | MAPE (dev) | median width dev / test | "
            "P(group change) dev | coverage of the limit | coverage of p_true | redrawn | tune+fit s | "
            "bootstrap s | limit fit s | ensemble MB | load (1/5/15 min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['size']:,} | {r['gen_seed']} | {r['events']} | {r['design']} | {r['chosen']} | {r['mape_dev']:.4f} | "
            f"{r['median_width_dev']:.3f} / {r['median_width_test']:.3f} | {r['group_change_dev']:.1%} | "
            f"{r['coverage_limit']:.1%} | {r['coverage_p_true']:.1%} | {r['redrawn_samples']} | {r['tune_fit_s']} | "
            f"{r['bootstrap_s']} | {r['limit_fit_s']} | {r['ensemble_mb']} | {'/'.join(map(str, r['loadavg']))} |")
    out += [
        "",
        "Reading the coverage. The interval is built to cover the risk that the chosen configuration, refitted "
        "(not re-tuned) on another sample of this size, would give this patient; its centre is the bootstrap models' "
        "spread around the final model, so it covers the limit only as far as the final model's distance "
        "from the limit is variance rather than bias (shrinkage, a calibration fitted on few events). "
        "Coverage below 95% means the interval understates how far a small-sample model is from the "
        "large-sample one; `limit below / above` shows in which direction it misses. Coverage of p_true is coverage of "
        "the generator's true probability: the interval is NOT a confidence interval for a patient's true "
        "risk, and it covers it for far fewer patients than 95% (the model's bias relative to the truth, "
        "and the re-tuning left out of the bootstrap, are not in it; see bench/instability_retune.md).",
        "",
    ]
    if not spd and before and before.get("speed"):
        spd = before["speed"]
        out += [f"Speed was not re-measured in this run (`--no-speed`); the figures below are the earlier run's "
                f"({before.get('finished', '')}, {spd['kind']} model).", ""]
    if spd:
        e, u, b = spd["explain_one"], spd["uncertainty_one"], spd["explain_plus_uncertainty_one"]
        out += [
            f"## Speed (one {spd['kind']} model from a 2,000-patient cohort, B = {spd['models']})", "",
            "| what | median µs | p90 µs | load before / after (1 min) |", "|---|---|---|---|",
            f"| one patient: `bundle.explain` (final model, TreeSHAP) | {e['median_us']:.1f} | {e['p90_us']:.1f} | "
            f"{e['loadavg'][0]} / {e['loadavg'][1]} |",
            f"| one patient: B margins only (`MarginEnsemble.margins`) | {spd['margins_one']['median_us']:.1f} | "
            f"{spd['margins_one']['p90_us']:.1f} | {spd['margins_one']['loadavg'][0]} / "
            f"{spd['margins_one']['loadavg'][1]} |",
            f"| one patient: B margins + summary (`bundle.uncertainty`) | {u['median_us']:.1f} | {u['p90_us']:.1f} | "
            f"{u['loadavg'][0]} / {u['loadavg'][1]} |",
            f"| one patient: explain + uncertainty | {b['median_us']:.1f} | {b['p90_us']:.1f} | "
            f"{b['loadavg'][0]} / {b['loadavg'][1]} |",
            "",
            f"Added per request (explain + uncertainty minus explain alone, medians): "
            f"**{spd['added_us_per_request']:.1f} µs**.",
            "",
            f"| batch of {BATCH_N:,} rows | rows/s | best of | load before / after (1 min) |", "|---|---|---|---|",
        ]
        for label, key in (("uncertainty (one thread)", "batch_uncertainty"),
                           (f"uncertainty (parallel, {spd['numba_threads']} numba threads)", "batch_uncertainty_parallel"),
                           ("explain of the final model (reference)", "batch_explain")):
            v = spd[key]
            out.append(f"| {label} | {v['rows_per_s']:,.0f} | {v['repeats']} | {v['loadavg'][0]} / {v['loadavg'][1]} |")
        out += ["", f"Ensemble size: {spd['ensemble_mb']} MB in memory, {spd['ensemble_file_mb']} MB saved "
                f"(`instability.npz`, compressed); {spd['mixed_feature_trees_walked']} trees that mix features are "
                "walked per patient, the rest are folded into per-feature tables.", ""]
    out += [
        "## What the interval does not cover", "",
        "- The patient's outcome: it is an interval for the model's risk, not for whether ICANS occurs.",
        "- Unmeasured patient-level effects: two patients with the same features get the same interval, whatever "
        "differs between them that no baseline feature records.",
        "- Shift between sites: the bootstrap resamples the development centre's patients; another centre's case "
        "mix, practice or outcome definition can move the risks beyond the interval (that is what local "
        "validation and `make update` are for).",
        "- Re-tuning: the bootstrap refits the chosen configuration (family and hyperparameters fixed), so the "
        "variation that choosing another family or other hyperparameters would add is not in it.",
        "",
    ]
    return "\n".join(out)
