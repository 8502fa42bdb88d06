"""Minimum sample size for developing a binary-outcome model (Riley et al., Stat Med 2019;38:1276
and BMJ 2020;368:m441; the `pmsampsize` criteria 1-3) and events per candidate parameter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize
from scipy.stats import norm

# Anticipated C-statistic for the sample-size criteria: the lower end of what baseline-only scores
# reach for severe CAR-T toxicity (EASIX-type scores AUROC ~0.7-0.8; expected oracle 0.75-0.85;
# /work/shared/reference/clinical-evidence.md). Conservative on purpose: a lower C asks for more data.
ANTICIPATED_C = 0.75


def max_cox_snell_r2(prevalence: float) -> float:
    """Largest Cox-Snell R2 a logistic model can reach at this outcome proportion:
    1 - exp(2 lnL_null / n), lnL_null / n = phi ln(phi) + (1 - phi) ln(1 - phi)
    (Riley et al., Stat Med 2019;38:1276, eq. 23; Nagelkerke R2 = R2_CS / this)."""
    phi = float(prevalence)
    if not 0 < phi < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1")
    return 1 - math.exp(2 * (phi * math.log(phi) + (1 - phi) * math.log(1 - phi)))


def cox_snell_r2_from_c(c_statistic: float, prevalence: float, nodes: int = 200) -> float:
    """Anticipated Cox-Snell R2 from an anticipated C-statistic (Riley, Van Calster & Collins,
    "A note on estimating the Cox-Snell R2 from a reported C statistic (AUROC) to inform sample
    size calculations for developing a prediction model with a binary outcome", Stat Med
    2021;40:859-864; `pmsampsize`'s `cstatistic` option).

    Their approximation assumes a linear predictor that is N(0, 1) in one outcome class and
    N(mu, 1) in the other, mu = sqrt(2) Phi^-1(C), and fits a logistic regression of the outcome on
    it in a simulated sample of 1,000,000. With equal variances that logistic model is exactly the
    true posterior, so the simulation converges to R2_CS = 1 - exp(-2 I), I the mutual
    information (nats) between outcome and linear predictor; it is computed here by Gauss-Hermite
    quadrature instead of simulation (deterministic; a test checks it against the simulation).
    """
    if not 0.5 <= c_statistic < 1:
        raise ValueError("C-statistic must lie in [0.5, 1)")
    phi = float(prevalence)
    if not 0 < phi < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1")
    mu = math.sqrt(2) * norm.ppf(c_statistic)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()  # expectation under N(0, 1)
    # llr(x) = log f_events(x) / f_non(x) = mu x - mu^2 / 2 ; events ~ N(mu, 1), non-events N(0, 1)
    # E_events[log f_events / m] = -E[log(phi + (1 - phi) exp(-llr))], x = mu + z
    llr_ev = mu * (mu + z) - mu * mu / 2
    llr_non = mu * z - mu * mu / 2
    term_ev = -np.logaddexp(math.log(phi), math.log(1 - phi) - llr_ev)
    term_non = -np.logaddexp(math.log(1 - phi), math.log(phi) + llr_non)
    info = phi * float(w @ term_ev) + (1 - phi) * float(w @ term_non)
    return float(1 - math.exp(-2 * info))


def _n_for_shrinkage(p: int, r2: float, s: float) -> float:
    """Riley et al. 2019 (Stat Med 38:1276) eq. 11 / BMJ 2020 criterion (i):
    n = p / ((S - 1) ln(1 - R2_CS / S))."""
    return p / ((s - 1) * math.log(1 - r2 / s))


def sample_size(
    n: int,
    events: int,
    n_params: int,
    anticipated_c: float | None = ANTICIPATED_C,
    anticipated_r2: float | None = None,
    prevalence: float | None = None,
    shrinkage: float = 0.9,
    nagelkerke_optimism: float = 0.05,
    intercept_margin: float = 0.05,
    round_like_pmsampsize: bool = True,
) -> dict[str, Any]:
    """Events per candidate predictor parameter and the minimum sample size for developing a
    binary-outcome prediction model (Riley et al., "Minimum sample size for developing a
    multivariable prediction model: Part II - binary and time-to-event outcomes", Stat Med
    2019;38:1276-1296; Riley et al., "Calculating the sample size required for developing a
    clinical prediction model", BMJ 2020;368:m441; R/Stata package `pmsampsize`).

    n_params: candidate predictor PARAMETERS (every dummy and non-linear term counts; for tree
    ensembles no exact count exists: pass the model matrix's column count as a lower bound).
    Anticipated Cox-Snell R2 (R2_CS): `anticipated_r2` if given; else from `anticipated_c` by
    `cox_snell_r2_from_c`; else (both None) 0.15 x max R2_CS, i.e. a Nagelkerke R2 of 0.15
    (the conservative default of Riley et al. 2020). phi = `prevalence`, by default events / n.

    Criteria (n_1..n_3, rounded up):
      1. expected uniform shrinkage >= S (0.9): n_1 = p / ((S - 1) ln(1 - R2_CS / S));
      2. small optimism in Nagelkerke R2 (<= delta = 0.05): S_2 = R2_CS / (R2_CS + delta max_R2_CS),
         n_2 = p / ((S_2 - 1) ln(1 - R2_CS / S_2)), max_R2_CS = 1 - exp(2 (phi ln phi + (1 - phi)
         ln(1 - phi)));
      3. overall risk estimated within +/- margin (0.05) with 95% confidence:
         n_3 = (1.96 / margin)^2 phi (1 - phi).
    Required n = max(n_1, n_2, n_3); required events = n phi; EPP = events / p.
    `round_like_pmsampsize` rounds max_R2_CS to 2 and S_2 to 3 decimals as pmsampsize 1.1.x does,
    so results match the reference software (Chagas example: R2_CS 0.288, 24 parameters,
    prevalence 0.174 -> 623 / 668 / 221; unrounded criterion 2 gives 662).

    Also returns expected_shrinkage: the S solving criterion 1 at the ACTUAL n (how much the
    coefficients of an unpenalised model would need shrinking), and `warning` (None when n and
    events meet every criterion).
    """
    if n_params < 1:
        raise ValueError("n_params must be >= 1")
    if n < 1 or not 0 <= events <= n:
        raise ValueError("need n >= 1 and 0 <= events <= n")
    phi = float(prevalence) if prevalence is not None else events / n
    if not 0 < phi < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1 (no events or no non-events)")
    max_r2 = max_cox_snell_r2(phi)
    max_r2_used = round(max_r2, 2) if round_like_pmsampsize else max_r2
    if anticipated_r2 is not None:
        r2, r2_source = float(anticipated_r2), "stated Cox-Snell R2"
    elif anticipated_c is not None:
        r2 = cox_snell_r2_from_c(anticipated_c, phi)
        r2_source = f"anticipated C-statistic {anticipated_c:g} (Riley, Van Calster & Collins 2021)"
    else:
        r2, r2_source = 0.15 * max_r2, "0.15 x max Cox-Snell R2 (Nagelkerke R2 0.15; Riley et al. 2020)"
    if not 0 < r2 < min(shrinkage, max_r2):
        raise ValueError(f"anticipated Cox-Snell R2 {r2:.3f} must lie in (0, min(shrinkage, max R2 {max_r2:.3f}))")

    n1 = math.ceil(_n_for_shrinkage(n_params, r2, shrinkage))
    s2 = r2 / (r2 + nagelkerke_optimism * max_r2_used)
    if round_like_pmsampsize:
        s2 = round(s2, 3)
    n2 = math.ceil(_n_for_shrinkage(n_params, r2, s2))
    n3 = math.ceil((1.96 / intercept_margin) ** 2 * phi * (1 - phi))
    required = max(n1, n2, n3)
    events_required = required * phi

    expected_shrinkage = float("nan")
    lo, hi = r2 * (1 + 1e-9), 1 - 1e-12
    f = lambda s: _n_for_shrinkage(n_params, r2, s) - n  # increasing in s
    if f(lo) < 0 < f(hi):
        expected_shrinkage = float(optimize.brentq(f, lo, hi, xtol=1e-10))
    elif f(hi) <= 0:
        expected_shrinkage = 1.0

    epp = events / n_params
    adequate = n >= required and events >= math.ceil(events_required - 1e-9)
    warning = None
    if not adequate:
        warning = (
            f"The development data (n = {n}, events = {events}, {epp:.1f} events per candidate "
            f"parameter) are smaller than the minimum sample size for {n_params} candidate "
            f"parameters (n >= {required}, events >= {math.ceil(events_required)}; Riley et al. "
            f"criteria with anticipated Cox-Snell R2 {r2:.3f}). Expect overfitting: an unpenalised "
            f"model's coefficients would need shrinking by a factor of about "
            f"{expected_shrinkage:.2f}. Use strong regularisation, fewer parameters, and read the "
            "held-out intervals, not the point estimates."
        )
    return {
        "n": int(n),
        "events": int(events),
        "n_params": int(n_params),
        "prevalence": phi,
        "events_per_parameter": epp,
        "anticipated_r2_cs": r2,
        "anticipated_r2_source": r2_source,
        "anticipated_c": anticipated_c if anticipated_r2 is None else None,
        "max_r2_cs": max_r2,
        "shrinkage_target": shrinkage,
        "shrinkage_criterion_2": s2,
        "n_required_shrinkage": n1,
        "n_required_optimism": n2,
        "n_required_intercept": n3,
        "n_required": required,
        "events_required": events_required,
        "epp_required": events_required / n_params,
        "expected_shrinkage": expected_shrinkage,
        "adequate": bool(adequate),
        "warning": warning,
    }
