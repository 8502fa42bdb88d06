"""The compiled kernels of `models.ensemble.MarginEnsemble` (numba), apart from its construction.

A patient's features are first binned once (its position among every threshold any model uses on
each feature); the per-feature tables then add the B models' one-feature trees in B-wide rows, and
the trees that mix features are evaluated as complete trees of depth 2 or 3 (or walked, deeper):
for one patient, vectorised over each model's trees; for a batch, over blocks of patients.
The kernels take the ensemble's arrays in `models.ensemble.ARRAYS` order (const, cuts, cut_start, main,
main_start, tree_model, model_start, node_feature, node_cut, leaf_value).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# The same ten arrays as a type: what `MarginEnsemble._args` hands to every kernel.
KernelArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                     np.ndarray, np.ndarray]
HUGE = 2147483647  # the bin of NaN at a node that sends NaN right: above every cut


@njit(cache=True, inline="always")
def _bin(x: float, cuts: np.ndarray, lo: int, hi: int, strict_less: bool) -> int:
    """How many of cuts[lo:hi] lie below x (<= x for xgboost's x < t rule): a node with threshold
    index k sends x left iff bin <= k. NaN -> -1."""
    if x != x:
        return -1
    a, b = lo, hi
    while a < b:
        mid = (a + b) >> 1
        if (cuts[mid] <= x) if strict_less else (cuts[mid] < x):
            a = mid + 1
        else:
            b = mid
    return a - lo


# The kernels take the ensemble's arrays in models.ensemble.ARRAYS order (A = const, cuts, cut_start, main,
# main_start, tree_model, model_start, node_feature, node_cut, leaf_value).

@njit(cache=True, fastmath=True)
def _segment_d2(bins: np.ndarray, nf: np.ndarray, nc: np.ndarray, lv: np.ndarray, lo: int, hi: int) -> float:
    """Sum over trees lo:hi (complete, depth 2) of the leaf each reaches; vectorised over trees."""
    s = 0.0
    for t in range(lo, hi):
        right = lv[3, t] if bins[nf[2, t]] > nc[2, t] else lv[2, t]
        left = lv[1, t] if bins[nf[1, t]] > nc[1, t] else lv[0, t]
        s += right if bins[nf[0, t]] > nc[0, t] else left
    return s


@njit(cache=True, fastmath=True)
def _segment_d3(bins: np.ndarray, nf: np.ndarray, nc: np.ndarray, lv: np.ndarray, lo: int, hi: int) -> float:
    s = 0.0
    for t in range(lo, hi):
        v3 = lv[1, t] if bins[nf[3, t]] > nc[3, t] else lv[0, t]
        v4 = lv[3, t] if bins[nf[4, t]] > nc[4, t] else lv[2, t]
        v5 = lv[5, t] if bins[nf[5, t]] > nc[5, t] else lv[4, t]
        v6 = lv[7, t] if bins[nf[6, t]] > nc[6, t] else lv[6, t]
        v1 = v4 if bins[nf[1, t]] > nc[1, t] else v3
        v2 = v6 if bins[nf[2, t]] > nc[2, t] else v5
        s += v2 if bins[nf[0, t]] > nc[0, t] else v1
    return s


@njit(cache=True)
def _segment_walk(bins: np.ndarray, nf: np.ndarray, nc: np.ndarray, lv: np.ndarray, lo: int, hi: int) -> float:
    n_inner = nf.shape[0]
    s = 0.0
    for t in range(lo, hi):
        node = 0
        while node < n_inner:
            node = 2 * node + 1 + (1 if bins[nf[node, t]] > nc[node, t] else 0)
        s += lv[node - n_inner, t]
    return s


@njit(cache=True)
def _row(x: np.ndarray, strict_less: bool, const: np.ndarray, cuts: np.ndarray, cut_start: np.ndarray, main: np.ndarray,
         main_start: np.ndarray, tree_model: np.ndarray, model_start: np.ndarray, nf: np.ndarray, nc: np.ndarray,
         lv: np.ndarray, out: np.ndarray) -> None:
    """The B calibrated margins of one row into out."""
    F = x.shape[0]
    B = const.shape[0]
    bins = np.empty(2 * F, dtype=np.int32)  # [NaN -> -1 (goes left), NaN -> huge (goes right)]
    for f in range(F):
        g = _bin(x[f], cuts, cut_start[f], cut_start[f + 1], strict_less)
        bins[f] = g
        bins[F + f] = g if g >= 0 else HUGE
    for b in range(B):
        out[b] = const[b]
    for f in range(F):
        start = main_start[f]
        if start < 0:
            continue
        row = bins[f] if bins[f] >= 0 else cut_start[f + 1] - cut_start[f] + 1
        base = start + row * B
        for b in range(B):
            out[b] += main[base + b]
    if tree_model.shape[0] == 0:
        return
    n_inner = nf.shape[0]
    for b in range(B):
        lo, hi = model_start[b], model_start[b + 1]
        if n_inner == 3:
            out[b] += _segment_d2(bins, nf, nc, lv, lo, hi)
        elif n_inner == 7:
            out[b] += _segment_d3(bins, nf, nc, lv, lo, hi)
        else:
            out[b] += _segment_walk(bins, nf, nc, lv, lo, hi)


@njit(cache=True)
def margins(X: np.ndarray, strict_less: bool, const: np.ndarray, cuts: np.ndarray, cut_start: np.ndarray, main: np.ndarray,
            main_start: np.ndarray, tree_model: np.ndarray, model_start: np.ndarray, nf: np.ndarray, nc: np.ndarray,
            lv: np.ndarray, out: np.ndarray) -> None:
    for i in range(X.shape[0]):
        _row(X[i], strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv, out[i])


@njit(cache=True, inline="always")
def _risk_quantile(sorted_log_odds: np.ndarray, q: float) -> float:
    """numpy's default ('linear') percentile of the risks, from the sorted log-odds (the order is
    the same; the interpolation is done on the risk scale, as np.percentile of the risks does)."""
    pos: float = q * (sorted_log_odds.shape[0] - 1)
    k = int(np.floor(pos))
    below: float = 1.0 / (1.0 + np.exp(-sorted_log_odds[k]))
    if k + 1 >= sorted_log_odds.shape[0]:
        return below
    above: float = 1.0 / (1.0 + np.exp(-sorted_log_odds[k + 1]))
    return below + (pos - k) * (above - below)


@njit(cache=True, inline="always")
def _group(z: float, low: float, high: float) -> int:
    return (1 if z >= low else 0) + (1 if z >= high else 0)


@njit(cache=True)
def _summarise_row(buf: np.ndarray, z0: float, low: float, high: float, q_lo: float,
                   q_hi: float) -> tuple[float, float, float]:
    own = _group(z0, low, high)
    other = 0
    for b in range(buf.shape[0]):
        if _group(buf[b], low, high) != own:
            other += 1
    buf.sort()
    return _risk_quantile(buf, q_lo), _risk_quantile(buf, q_hi), other / buf.shape[0]


@njit(cache=True)
def summary(X: np.ndarray, strict_less: bool, const: np.ndarray, cuts: np.ndarray, cut_start: np.ndarray, main: np.ndarray,
            main_start: np.ndarray, tree_model: np.ndarray, model_start: np.ndarray, nf: np.ndarray, nc: np.ndarray,
            lv: np.ndarray, log_odds: np.ndarray, low: float, high: float, q_lo: float, q_hi: float, lo: np.ndarray,
            hi: np.ndarray, change: np.ndarray) -> None:
    buf = np.empty(const.shape[0])
    for i in range(X.shape[0]):
        _row(X[i], strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv, buf)
        lo[i], hi[i], change[i] = _summarise_row(buf, log_odds[i], low, high, q_lo, q_hi)


# -- batches: the trees that mix features evaluated for a block of patients at a time -------------
# Every inner node of a complete depth-2 or depth-3 tree is compared for all the block's patients
# (contiguous rows of the bins matrix), and the leaf is chosen by selects: no data-dependent loads,
# so the compiler vectorises the loop over patients. Deeper trees take the per-row walk.

BLOCK = 256


@njit(cache=True)
def _bins_block(X: np.ndarray, lo: int, hi: int, strict_less: bool, cuts: np.ndarray, cut_start: np.ndarray,
                bins: np.ndarray) -> None:
    """bins[f, p] and bins[F + f, p] (NaN -> -1 and NaN -> huge) of rows lo:hi."""
    F = X.shape[1]
    for p in range(hi - lo):
        for f in range(F):
            g = _bin(X[lo + p, f], cuts, cut_start[f], cut_start[f + 1], strict_less)
            bins[f, p] = g
            bins[F + f, p] = g if g >= 0 else HUGE


@njit(cache=True, fastmath=True)
def _block_d2(bins: np.ndarray, n: int, tree_model: np.ndarray, nf: np.ndarray, nc: np.ndarray, lv: np.ndarray,
              acc: np.ndarray) -> None:
    for t in range(tree_model.shape[0]):
        a = acc[tree_model[t]]
        x0, x1, x2 = bins[nf[0, t]], bins[nf[1, t]], bins[nf[2, t]]
        k0, k1, k2 = nc[0, t], nc[1, t], nc[2, t]
        l0, l1, l2, l3 = lv[0, t], lv[1, t], lv[2, t], lv[3, t]
        for p in range(n):
            right = l3 if x2[p] > k2 else l2
            left = l1 if x1[p] > k1 else l0
            a[p] += right if x0[p] > k0 else left


@njit(cache=True, fastmath=True)
def _block_d3(bins: np.ndarray, n: int, tree_model: np.ndarray, nf: np.ndarray, nc: np.ndarray, lv: np.ndarray,
              acc: np.ndarray) -> None:
    for t in range(tree_model.shape[0]):
        a = acc[tree_model[t]]
        x0, x1, x2, x3 = bins[nf[0, t]], bins[nf[1, t]], bins[nf[2, t]], bins[nf[3, t]]
        x4, x5, x6 = bins[nf[4, t]], bins[nf[5, t]], bins[nf[6, t]]
        k0, k1, k2, k3, k4, k5, k6 = nc[0, t], nc[1, t], nc[2, t], nc[3, t], nc[4, t], nc[5, t], nc[6, t]
        for p in range(n):
            v3 = lv[1, t] if x3[p] > k3 else lv[0, t]
            v4 = lv[3, t] if x4[p] > k4 else lv[2, t]
            v5 = lv[5, t] if x5[p] > k5 else lv[4, t]
            v6 = lv[7, t] if x6[p] > k6 else lv[6, t]
            v1 = v4 if x1[p] > k1 else v3
            v2 = v6 if x2[p] > k2 else v5
            a[p] += v2 if x0[p] > k0 else v1


@njit(cache=True)
def _block_walk(bins: np.ndarray, n: int, tree_model: np.ndarray, nf: np.ndarray, nc: np.ndarray, lv: np.ndarray,
                acc: np.ndarray) -> None:
    n_inner = nf.shape[0]
    for t in range(tree_model.shape[0]):
        a = acc[tree_model[t]]
        for p in range(n):
            node = 0
            while node < n_inner:
                node = 2 * node + 1 + (1 if bins[nf[node, t], p] > nc[node, t] else 0)
            a[p] += lv[node - n_inner, t]


def _summary_blocks(X: np.ndarray, strict_less: bool, const: np.ndarray, cuts: np.ndarray, cut_start: np.ndarray,
                   main: np.ndarray, main_start: np.ndarray, tree_model: np.ndarray, model_start: np.ndarray,
                   nf: np.ndarray, nc: np.ndarray, lv: np.ndarray, log_odds: np.ndarray, low: float, high: float,
                   q_lo: float, q_hi: float, lo: np.ndarray, hi: np.ndarray, change: np.ndarray) -> None:
    n, F = X.shape
    B = const.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(n_blocks):
        start = blk * BLOCK
        stop = min(n, start + BLOCK)
        m = stop - start
        bins = np.empty((2 * F, BLOCK), dtype=np.int32)
        _bins_block(X, start, stop, strict_less, cuts, cut_start, bins)
        acc = np.zeros((B, BLOCK))
        if tree_model.shape[0] > 0:
            if nf.shape[0] == 3:
                _block_d2(bins, m, tree_model, nf, nc, lv, acc)
            elif nf.shape[0] == 7:
                _block_d3(bins, m, tree_model, nf, nc, lv, acc)
            else:
                _block_walk(bins, m, tree_model, nf, nc, lv, acc)
        buf = np.empty(B)
        for p in range(m):
            for b in range(B):
                buf[b] = const[b] + acc[b, p]
            for f in range(F):
                s = main_start[f]
                if s < 0:
                    continue
                g = bins[f, p]
                row = g if g >= 0 else cut_start[f + 1] - cut_start[f] + 1
                base = s + row * B
                for b in range(B):
                    buf[b] += main[base + b]
            i = start + p
            lo[i], hi[i], change[i] = _summarise_row(buf, log_odds[i], low, high, q_lo, q_hi)


# Blocks of patients on numba's threads (`icans-risk score`, large batches), or on the calling thread
# only (the service: its workers are the parallelism; a second thread per worker would oversubscribe).
summary_blocks = njit(cache=True, parallel=True)(_summary_blocks)
summary_blocks_serial = njit(cache=True)(_summary_blocks)

