"""One patient's picture: a waterfall of an answer's exact SHAP explanation.

From the average patient's log-odds (the base) each feature's contribution moves the estimate,
one bar per input with its value and unit as people read them (the labs not measured share one bar),
down to this patient's log-odds; the axis is the
log-odds (where the contributions add up exactly) and the probability scale is marked on top.
Drawn from the answer alone (never from the request), so a patient identifier cannot appear.

Thread-safe: each call draws its own Figure without pyplot's global state.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import matplotlib
from matplotlib.figure import Figure

from core import display
from core import style
from core.contract import FEATURES_BY_NAME

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


def steps(answer: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(label, start, end) of every bar, in drawing order: the base, each contribution, the total.

    Labels are the contract's names for people with the value rounded for people ('CRP: 8 mg/L');
    the optional labs that were not measured share one bar ('Not measured: IL-6, IFN-γ'), their
    contributions summed, after the others. Each contribution starts where the previous one ended;
    the total ends at base + sum(contributions), which is the answer's log-odds."""
    ex = answer["explanation"]
    base = float(ex["base_log_odds"])
    out = [("average patient (base)", 0.0, base)]
    at = base
    unmeasured: list[Mapping[str, Any]] = []
    for c in ex["contributions"]:
        f = FEATURES_BY_NAME.get(c["feature"])
        if c.get("value") is None and f is not None and not f.required:
            unmeasured.append(c)
            continue
        out.append((display.label(c["feature"], c.get("value")), at, at + float(c["log_odds"])))
        at += float(c["log_odds"])
    if unmeasured:
        total = sum(float(c["log_odds"]) for c in unmeasured)
        names = ", ".join(display.name(c["feature"]) for c in unmeasured)
        out.append((f"Not measured: {names}", at, at + total))
        at += total
    out.append(("this patient", 0.0, at))
    return out


def figure(
    answer: Mapping[str, Any],
    thresholds: tuple[float, float] | None = None,
    outcome: str = "severe ICANS",
    notice: bool = True,
) -> Figure:
    """The waterfall as a matplotlib Figure (drawn, not saved). `notice=False` leaves the
    research-use line out, for a page that states it once itself; a picture on its own keeps it."""
    bars = steps(answer)
    n = len(bars)
    fig = Figure(figsize=(8.6, 0.32 * n + 2.9))
    ax = fig.add_subplot(1, 1, 1)
    ends = [b[2] for b in bars] + [b[1] for b in bars[1:-1]]
    lo, hi = min(ends), max(ends)
    if thresholds:
        lo = min(lo, float(_logit(thresholds[0])))
        hi = max(hi, float(_logit(thresholds[1])))
    pad = max(0.25, 0.08 * (hi - lo))
    # room on the right for the labels of the rightmost bar and of the total ("-0.74  (risk 32%)")
    lo, hi = lo - pad, hi + pad + 0.16 * (hi - lo + 2 * pad)
    for i, (label, start, end) in enumerate(bars):
        y = i
        if i == 0 or i == n - 1:  # base and total: a marker at the value, a thin line from the axis
            colour = style.NEUTRAL if i == 0 else style.COLOURS[style.MODEL]
            ax.plot([end], [y], marker="D", color=colour, ms=7, zorder=3, gid="base" if i == 0 else "total")
            text = f"{display.log_odds(end)}  (risk {display.percent(float(_expit(end)))})"
            ax.annotate(text, (end, y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8,
                        color=colour, fontweight="bold" if i == n - 1 else None)
            continue
        width = end - start
        colour = style.RAISES if width > 0 else style.LOWERS if width < 0 else style.NEUTRAL
        ax.barh(y, width, left=start, height=0.62, color=colour, gid=f"contribution-{i}")
        if i < n - 2:
            ax.plot([end, end], [y + 0.31, y + 0.69], color="#999999", lw=0.6)
        ax.annotate(display.log_odds(width), (max(start, end), y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7, color=colour)
    ax.plot([bars[-2][2], bars[-2][2]], [n - 2 + 0.31, n - 1], color="#999999", lw=0.6)
    ax.set_yticks(range(n))
    ax.set_yticklabels([b[0] for b in bars], fontsize=8)
    ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.set_ylim(n + 0.6, -0.6)  # top to bottom; a free band under the total for the thresholds' labels
    ax.set_xlim(lo, hi)
    ax.set_xlabel("log-odds of " + outcome + " (contributions add up on this scale)")
    if thresholds:
        for t, what, side in zip(thresholds, ("low | intermediate", "intermediate | high"), ("left", "right")):
            x = float(_logit(t))
            ax.axvline(x, color="#777777", ls=":", lw=1)
            ax.annotate(f"{what}\n(risk {display.percent(t)})", (x, n + 0.55),
                        xytext=(2 if side == "left" else -2, 0), textcoords="offset points", fontsize=6.5,
                        va="bottom", ha=side, color="#555555")
    top = ax.secondary_xaxis("top", functions=(_expit, _logit))
    p_lo, p_hi = float(_expit(lo)), float(_expit(hi))
    ticks = [p for p in _PROB_TICKS if p_lo <= p <= p_hi]
    while len(ticks) > 9:  # keep them legible: every other one
        ticks = ticks[::2]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{p * 100:g}%" for p in ticks], fontsize=8)
    top.set_xlabel("risk")
    model = answer.get("model") or {}
    risk = float(answer["risk"])
    ax.set_title(
        f"Why this estimate: risk {display.percent(risk)} ({answer.get('risk_group', '?')}), "
        f"{model.get('name', 'model')} version {model.get('version', '?')}",
        fontsize=10, pad=34,
    )
    if notice:
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
    notice: bool = True,
) -> bytes:
    """The waterfall as SVG or PNG bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}")
    fig = figure(answer, thresholds=thresholds, outcome=outcome, notice=notice)
    buf = io.BytesIO()
    metadata: dict[str, Any] = {"Title": "ICANS risk explanation"}
    if notice:  # a page that states the notice itself inlines the picture without it
        metadata["Description"] = style.RESEARCH_ONLY
    if fmt == "svg":
        metadata["Date"] = None
    fig.savefig(buf, format=fmt, dpi=style.DPI, metadata=metadata)
    return buf.getvalue()

