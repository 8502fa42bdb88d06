"""One patient's picture: a waterfall of an answer's exact SHAP explanation.

From the average patient's log-odds (the base) each feature's contribution moves the estimate,
one bar per feature with its value and unit, down to this patient's log-odds; the axis is the
log-odds (where the contributions add up exactly) and the probability scale is marked on top.
Drawn from the answer alone (never from the request), so a patient identifier cannot appear.

Thread-safe: each call draws its own Figure without pyplot's global state.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import matplotlib
from matplotlib.figure import Figure

from pipeline import style

# Text stays text in SVG (searchable, accessible, no embedded glyphs); a process-wide setting
# that only SVG output reads.
matplotlib.rcParams["svg.fonttype"] = "none"

FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
_PROB_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
               0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def _expit(x):
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def _logit(p):
    import numpy as np

    p = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def _value_text(c: Mapping[str, Any]) -> str:
    v, unit = c.get("value"), c.get("unit") or "-"
    if v is None:
        return "not provided"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        text = f"{v:.4g}"
    else:
        text = str(v)
    return text if unit in ("-", "") else f"{text} {unit}"


def steps(answer: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(label, start, end) of every bar, in drawing order: the base, each contribution, the total.

    Each contribution starts where the previous one ended; the total ends at
    base + sum(contributions), which is the answer's log-odds."""
    ex = answer["explanation"]
    base = float(ex["base_log_odds"])
    out = [("average patient (base)", 0.0, base)]
    at = base
    for c in ex["contributions"]:
        label = f"{c['feature']} = {_value_text(c)}"
        out.append((label, at, at + float(c["log_odds"])))
        at += float(c["log_odds"])
    out.append(("this patient", 0.0, at))
    return out


def figure(
    answer: Mapping[str, Any],
    thresholds: tuple[float, float] | None = None,
    outcome: str = "severe ICANS",
) -> Figure:
    """The waterfall as a matplotlib Figure (drawn, not saved)."""
    bars = steps(answer)
    n = len(bars)
    fig = Figure(figsize=(8.6, 0.32 * n + 2.6))
    ax = fig.add_subplot(1, 1, 1)
    ends = [b[2] for b in bars] + [b[1] for b in bars[1:-1]]
    lo, hi = min(ends), max(ends)
    if thresholds:
        lo = min(lo, float(_logit(thresholds[0])))
        hi = max(hi, float(_logit(thresholds[1])))
    pad = max(0.25, 0.08 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    for i, (label, start, end) in enumerate(bars):
        y = i
        if i == 0 or i == n - 1:  # base and total: a marker at the value, a thin line from the axis
            colour = style.NEUTRAL if i == 0 else style.COLOURS[style.MODEL]
            ax.plot([end], [y], marker="D", color=colour, ms=7, zorder=3, gid="base" if i == 0 else "total")
            text = f"{end:+.3f}  (risk {float(_expit(end)):.3f})"
            ax.annotate(text, (end, y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8,
                        color=colour, fontweight="bold" if i == n - 1 else None)
            continue
        width = end - start
        colour = style.RAISES if width > 0 else style.LOWERS if width < 0 else style.NEUTRAL
        ax.barh(y, width, left=start, height=0.62, color=colour, gid=f"contribution-{i}")
        if i < n - 2:
            ax.plot([end, end], [y + 0.31, y + 0.69], color="#999999", lw=0.6)
        ax.annotate(f"{width:+.3f}", (max(start, end), y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7, color=colour)
    ax.plot([bars[-2][2], bars[-2][2]], [n - 2 + 0.31, n - 1], color="#999999", lw=0.6)
    ax.set_yticks(range(n))
    ax.set_yticklabels([b[0] for b in bars], fontsize=8)
    ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(lo, hi)
    ax.set_xlabel("log-odds of " + outcome + " (contributions add up on this scale)")
    if thresholds:
        for t, what, side in zip(thresholds, ("low | intermediate", "intermediate | high"), ("left", "right")):
            x = float(_logit(t))
            ax.axvline(x, color="#777777", ls=":", lw=1)
            ax.annotate(f"{what}\n(risk {t:.3g})", (x, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(2 if side == "left" else -2, 2), textcoords="offset points", fontsize=6.5,
                        va="bottom", ha=side, color="#555555")
    top = ax.secondary_xaxis("top", functions=(_expit, _logit))
    p_lo, p_hi = float(_expit(lo)), float(_expit(hi))
    ticks = [p for p in _PROB_TICKS if p_lo <= p <= p_hi]
    while len(ticks) > 9:  # keep them legible: every other one
        ticks = ticks[::2]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{p:g}" for p in ticks], fontsize=8)
    top.set_xlabel("probability (risk)")
    model = answer.get("model") or {}
    risk = float(answer["risk"])
    ax.set_title(
        f"Why this estimate: risk {risk:.3f} ({answer.get('risk_group', '?')}), "
        f"{model.get('name', 'model')} version {model.get('version', '?')}",
        fontsize=10, pad=34,
    )
    fig.text(0.5, 0.995, style.RESEARCH_ONLY, ha="center", va="top", fontsize=8.5, color="#7b1d12", fontweight="bold")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    style.caption(
        fig,
        "Red bars raise the risk, green bars lower it, from the average patient of the development data. "
        "Each bar is one input's exact SHAP contribution for this patient, on the log-odds scale; the top axis "
        "gives the same points as probabilities. It explains the model, not the patient's biology.",
    )
    return fig


def render(
    answer: Mapping[str, Any],
    fmt: str = "svg",
    thresholds: tuple[float, float] | None = None,
    outcome: str = "severe ICANS",
) -> bytes:
    """The waterfall as SVG or PNG bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}")
    fig = figure(answer, thresholds=thresholds, outcome=outcome)
    buf = io.BytesIO()
    metadata = {"Title": "ICANS risk explanation", "Description": style.RESEARCH_ONLY} if fmt == "png" else {
        "Title": "ICANS risk explanation", "Description": style.RESEARCH_ONLY, "Date": None}
    fig.savefig(buf, format=fmt, dpi=style.DPI, metadata=metadata)
    return buf.getvalue()

