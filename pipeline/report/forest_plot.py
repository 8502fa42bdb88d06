"""Forest plots of per-centre performance: one row per centre (estimate and 95% CI), the pooled
random-effects estimate as a diamond and the 95% prediction interval for a new centre as a bar
under it. Centres too small to estimate are listed with the reason, not dropped silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stats.meta_analysis import MEASURE_SCALE, Pooled, to_scale

LABELS = {
    "auroc": ("AUROC", 0.5),
    "calibration_slope": ("calibration slope", 1.0),
    "calibration_intercept": ("calibration-in-the-large", 0.0),
    "oe": ("observed / expected events", 1.0),
}
CAPTION = (
    "One row per centre: the estimate of the model developed without that centre, with its 95% interval. "
    "Diamond: the pooled random-effects estimate (REML, Hartung-Knapp-Sidik-Jonkman 95% CI). Bar under it: "
    "the 95% prediction interval, the range a new centre should expect. Dotted line: perfect or no-skill value."
)


def _centre_interval(row: dict[str, Any], measure: str) -> tuple[float, float, float]:
    from scipy.special import expit

    scale = MEASURE_SCALE.get(measure, "identity")
    est, se = to_scale(np.array([row[measure]]), np.array([row[f"{measure}_se"]]), scale)
    lo, hi = est[0] - 1.96 * se[0], est[0] + 1.96 * se[0]
    if scale == "logit":
        return float(row[measure]), float(expit(lo)), float(expit(hi))
    if scale == "log":
        return float(row[measure]), float(np.exp(lo)), float(np.exp(hi))
    return float(row[measure]), float(lo), float(hi)


def forest_plot(rows: list[dict[str, Any]], pooled: Pooled | None, measure: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core import style
    from pipeline.report.plots import save

    label, reference = LABELS.get(measure, (measure, 0.0))
    n_rows = len(rows) + (2 if pooled else 0)
    fig, ax = plt.subplots(figsize=(7.0, 1.4 + 0.38 * n_rows))
    colour = style.COLOURS.get("model", "#1f77b4")
    ticks: list[float] = []
    names: list[str] = []
    for i, r in enumerate(rows):
        yy = float(n_rows - i)
        ticks.append(yy)
        if r.get("estimable") and np.isfinite(r.get(measure, np.nan)) and np.isfinite(r.get(f"{measure}_se", np.nan)):
            est, lo, hi = _centre_interval(r, measure)
            ax.plot([lo, hi], [yy, yy], color=colour, lw=1.5)
            ax.plot([est], [yy], "s", color=colour, ms=5)
            names.append(f"{r['centre']} (n {r['n']}, {r['events']} events)")
        else:
            names.append(f"{r['centre']} (n {r['n']}, {r['events']} events): not estimated")
    if pooled is not None:
        yy = 1.0
        ticks.append(yy)
        names.append(f"pooled, {pooled.k} centres (I2 {pooled.i2:.0f}%)")
        ax.fill([pooled.ci_low, pooled.estimate, pooled.ci_high, pooled.estimate],
                [yy, yy + 0.25, yy, yy - 0.25], color="black")
        if np.isfinite(pooled.pi_low):
            ax.plot([pooled.pi_low, pooled.pi_high], [yy - 0.45, yy - 0.45], color="grey", lw=3)
    ax.axvline(reference, color="grey", ls=":", lw=1)
    ax.set_yticks(ticks, names)
    ax.set_xlabel(label)
    ax.set_title(f"{label} by centre (internal-external cross-validation)")
    return save(fig, path, CAPTION, bottom=0.18)


def forest_plots(rows: list[dict[str, Any]], pooled: dict[str, Pooled], out_dir: Path) -> list[Path]:
    """One forest plot per measure: forest_<measure>.png."""
    return [forest_plot(rows, pooled.get(m), m, Path(out_dir) / f"forest_{m}.png") for m in LABELS]


def transport_summary(rows: list[dict[str, Any]], pooled: dict[str, Pooled], sentence: str,
                      heterogeneity_too_large: bool, out_dir: Path) -> dict[str, Any]:
    """What the validation report and the model card show of an IECV (`sections.transport_blocks`):
    the transport sentence, the pooled figures of the four measures, and their forest plots drawn
    into out_dir (forest_<measure>.png, named by `plots`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = forest_plots(rows, pooled, out_dir)
    return {"sentence": sentence, "heterogeneity_too_large": bool(heterogeneity_too_large),
            "pooled": [pooled[m].to_dict() for m in LABELS if m in pooled],
            "centres": [{k: r[k] for k in ("centre", "n", "events", "estimable")} for r in rows],
            "plots": {m: str(p) for m, p in zip(LABELS, paths)}}
