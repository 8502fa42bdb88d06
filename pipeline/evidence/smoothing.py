"""The loess smoother behind the calibration curve and the ICI: local polynomial regression as R's
`loess`, vectorised over evaluation points, with bootstrap weights entering as case weights."""

from __future__ import annotations

import math

import numpy as np

from pipeline.stats.bootstrap import CELLS_PER_CHUNK
from pipeline.stats.metrics import _as_binary, _as_score


def loess(
    x: np.ndarray,
    y: np.ndarray,
    x_eval: np.ndarray,
    weights: np.ndarray | None = None,
    span: float = 0.75,
    degree: int = 2,
) -> np.ndarray:
    """Local polynomial regression (loess without robustness iterations, as R's
    `loess(y ~ x, span = 0.75, degree = 2)` with family "gaussian", evaluated directly rather
    than by R's kd-tree interpolation): at each x0, a weighted least-squares polynomial of
    `degree` on the nearest `span` share of the data (by weight), tricube kernel.

    Robustness iterations (as in R's `lowess`) are deliberately absent: for a 0/1 outcome they
    down-weight the events and bias the curve. Returns NaN where the local fit is singular.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x_eval = np.atleast_1d(np.asarray(x_eval, dtype=float))
    w0 = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if not 0 < span <= 1:
        raise ValueError("span must lie in (0, 1]")
    if degree not in (1, 2):
        raise ValueError("degree must be 1 or 2")
    n, m = x.shape[0], x_eval.shape[0]
    out = np.full(m, np.nan)
    step = max(1, CELLS_PER_CHUNK // max(n, 1) // 4)
    for start in range(0, m, step):
        xe = x_eval[start : start + step]
        geometry = loess_geometry(x, xe, sort=weights is not None)
        out[start : start + xe.shape[0]] = loess_fit(geometry, y, w0, span, degree, weights is None)
    return out


def loess_geometry(x: np.ndarray, xe: np.ndarray, sort: bool) -> dict[str, np.ndarray]:
    """Signed and absolute distances from each evaluation point to each observation (and their
    order, needed for weighted spans); computed once and reused across bootstrap weights."""
    d = x[None, :] - xe[:, None]
    dist = np.abs(d)
    g = {"d": d, "dist": dist}
    if sort:
        g["order"] = np.argsort(dist, axis=1, kind="stable")
        g["sorted_dist"] = np.take_along_axis(dist, g["order"], axis=1)
    return g


def loess_fit(g: dict[str, np.ndarray], y: np.ndarray, w0: np.ndarray, span: float, degree: int,
              unweighted: bool) -> np.ndarray:
    """The local fit at each evaluation point of the geometry `g`, observations weighted by w0
    (bootstrap counts; the span is then a share of the total weight) unless `unweighted`."""
    d, dist = g["d"], g["dist"]
    m, n = dist.shape
    if unweighted:
        # R: the q = floor(n span) nearest points get positive weight; h = distance to the q-th.
        q = min(max(int(math.floor(n * span)), degree + 1), n)
        h = np.partition(dist, q - 1, axis=1)[:, q - 1]
    else:
        cum = np.cumsum(w0[g["order"]], axis=1)
        k = np.minimum((cum < span * cum[:, -1:] - 1e-12).sum(axis=1), n - 1)
        h = g["sorted_dist"][np.arange(m), k]
    h = np.where(h > 0, h, np.max(dist, axis=1))
    h = np.maximum(h, 1e-12) * (1 + 1e-10)  # the q-th neighbour keeps a positive weight
    u = np.minimum(dist * (1.0 / h)[:, None], 1.0)
    t = 1.0 - u * u * u
    kern = t * t * t  # tricube; integer powers by multiplication (np.power is slow)
    if not unweighted:
        kern *= w0[None, :]
    # Moments sum_j K_j d_j^k (k <= 2 degree) and sum_j K_j d_j^k y_j, built by repeated products.
    terms = degree + 1
    moments, ymoments = [], []
    cur = kern
    for k in range(2 * degree + 1):
        moments.append(cur.sum(axis=1))
        if k < terms:
            ymoments.append(cur @ y)
        if k < 2 * degree:
            cur = cur * d
    A = np.empty((m, terms, terms))
    for i in range(terms):
        for j in range(terms):
            A[:, i, j] = moments[i + j]
    bvec = np.stack(ymoments, axis=1)
    fitted = np.full(m, np.nan)
    good = np.abs(np.linalg.det(A)) > 1e-300
    if good.any():
        fitted[good] = np.linalg.solve(A[good], bvec[good][..., None])[:, 0, 0]
    return fitted


def smoothed_observed(y: np.ndarray, p: np.ndarray, span: float = 0.75, degree: int = 2, grid: int = 200) -> np.ndarray:
    """The loess calibration curve evaluated at every patient's prediction, clipped to [0, 1].

    Evaluated exactly at up to `grid` distinct predictions and linearly interpolated in between
    (the curve is smooth, so the error is negligible), which keeps n = 20,000 fast."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    uniq = np.unique(p)
    nodes = uniq if uniq.size <= grid else np.unique(np.quantile(p, np.linspace(0, 1, grid)))
    curve = loess(p, y, nodes, span=span, degree=degree)
    if nodes.size == 1:
        return np.clip(np.full_like(p, curve[0]), 0, 1)
    return np.clip(np.interp(p, nodes, curve), 0, 1)
