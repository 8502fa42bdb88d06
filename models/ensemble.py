"""The B bootstrap models of the development-instability analysis, compiled for serving.

Why a form of its own: B >= 200 refits of a 300-tree model are 60,000 trees, and walking them for
each patient (or computing their leaf tables) costs milliseconds. Most of those trees split on one
feature only (stumps, or depth-2 trees that split the same feature twice); their sum is a step
function of that feature, so all of them, for all B models, collapse into one table per feature:
`main[f][bin, b]`, where `bin` is the patient's position among every threshold any model uses on
that feature. A patient then costs one binary search per feature, F rows of B additions, and a
walk of only the trees that mix features. Each model's Platt calibration (a_b + s_b * margin) is
folded into the tables, so the kernel returns calibrated log-odds directly.

Decisions follow the library's rule exactly as `models.trees` does (xgboost: x < t in float32;
scikit-learn: x <= t) and NaN follows each node's default branch: `margins` equals each model's
own calibrated margin to rounding (tests check it against `models.explain.tree_margin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numba import njit, prange

from models.trees import FlatTrees

ENSEMBLE_FILE = "instability.npz"
INTERVAL = (2.5, 97.5)  # percentiles of the B models' risks: a 95% interval


@dataclass(frozen=True, eq=False)
class MarginEnsemble:
    """B calibrated tree models evaluated together; `summary(X, ...)` is what the service serves."""

    n_models: int
    n_features: int
    strict_less: bool
    float32_inputs: bool
    const: np.ndarray  # (B,) calibrated constant of each model
    cuts: np.ndarray  # all features' sorted thresholds, concatenated
    cut_start: np.ndarray  # (F + 1,) feature f's thresholds are cuts[cut_start[f]:cut_start[f+1]]
    main: np.ndarray  # concatenated (n_cuts_f + 2, B) tables, flattened; the last row is NaN
    main_start: np.ndarray  # (F,) offset of feature f's table in `main`, -1 when no table
    # The T trees that mix features, as complete trees of depth D in heap order (node i has
    # children 2i+1, 2i+2; shallower leaves are repeated down to depth D), so that a walk is D
    # branch-free steps: go right iff bins[node_feature] > node_cut, where node_feature indexes
    # [bins with NaN -> -1, bins with NaN -> huge], which encodes each node's NaN direction.
    tree_model: np.ndarray  # (T,) int32: which model the tree belongs to (sorted)
    model_start: np.ndarray  # (B + 1,) model b's trees are model_start[b]:model_start[b+1]
    node_feature: np.ndarray  # (2^D - 1, T) int32
    node_cut: np.ndarray  # (2^D - 1, T) int32
    leaf_value: np.ndarray  # (2^D, T) float64: calibrated (its model's slope folded in)

    @property
    def nbytes(self) -> int:
        return int(sum(getattr(self, k).nbytes for k in _ARRAYS))

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def build(cls, models: Sequence[FlatTrees], intercepts: Sequence[float], slopes: Sequence[float]) -> MarginEnsemble:
        """From the B models' flattened trees and their Platt calibrations."""
        if not models:
            raise ValueError("no models")
        first = models[0]
        if any((m.strict_less, m.float32_inputs, m.n_features) != (first.strict_less, first.float32_inputs,
                                                                  first.n_features) for m in models):
            raise ValueError("the models must come from one family with one feature matrix")
        B, F = len(models), first.n_features
        thresholds: list[list[np.ndarray]] = [[] for _ in range(F)]
        for m in models:
            inner = m.feature >= 0
            for f in np.unique(m.feature[inner]):
                thresholds[int(f)].append(m.threshold[inner & (m.feature == f)])
        cuts_f = [np.unique(np.concatenate(t)) if t else np.empty(0) for t in thresholds]
        cut_start = np.zeros(F + 1, dtype=np.int64)
        np.cumsum([len(c) for c in cuts_f], out=cut_start[1:])
        main_start = np.full(F, -1, dtype=np.int64)
        offset = 0
        for f, c in enumerate(cuts_f):
            if len(c):
                main_start[f] = offset
                offset += (len(c) + 2) * B
        main = np.zeros(offset)
        const = np.zeros(B)
        walk: list[tuple[np.ndarray, ...]] = []  # trees that mix features: (feature, cut, left, right, NaN left, value)
        tree_model: list[int] = []
        for b, (m, a, s) in enumerate(zip(models, intercepts, slopes)):
            const[b] = a + s * m.base_margin
            ends = np.append(m.roots[1:], len(m.feature))
            for root, end in zip(m.roots.tolist(), ends.tolist()):
                feat = m.feature[root:end]
                used = np.unique(feat[feat >= 0])
                value = s * m.value[root:end]
                if len(used) == 0:  # a single leaf
                    const[b] += value[0]
                    continue
                cut = np.where(feat >= 0, 0, -1)
                for f in used:
                    at = feat == f
                    cut[at] = np.searchsorted(cuts_f[f], m.threshold[root:end][at])
                left = np.where(feat >= 0, m.left[root:end] - root, -1)
                right = np.where(feat >= 0, m.right[root:end] - root, -1)
                if len(used) == 1:  # a step function of one feature: into its table, for every bin
                    f = int(used[0])
                    n_bins = len(cuts_f[f]) + 1
                    bins = np.append(np.arange(n_bins), -1)  # the last is NaN
                    leaf = _leaf_of(bins, feat, cut, left, right, m.missing_left[root:end])
                    table = main[main_start[f]:main_start[f] + (n_bins + 1) * B].reshape(n_bins + 1, B)
                    table[:, b] += value[leaf]
                    continue
                walk.append((feat, cut, left, right, m.missing_left[root:end], value))
                tree_model.append(b)
        heap = _heap_layout(walk, cuts_f, F)
        return cls(
            n_models=B, n_features=F, strict_less=first.strict_less, float32_inputs=first.float32_inputs,
            const=const, cuts=np.concatenate(cuts_f).astype(np.float64) if F else np.empty(0),
            cut_start=cut_start, main=main, main_start=main_start,
            tree_model=np.asarray(tree_model, dtype=np.int32),
            model_start=np.searchsorted(np.asarray(tree_model, dtype=np.int64), np.arange(B + 1)).astype(np.int64),
            **heap,
        )

    def recalibrated(self, intercept: float, slope: float) -> MarginEnsemble:
        """Every model's log-odds z mapped to intercept + slope * z (a local recalibration, applied to
        the bootstrap models as to the final one)."""
        import dataclasses

        return dataclasses.replace(self, const=intercept + slope * self.const, main=slope * self.main,
                                   leaf_value=slope * self.leaf_value)

    # -- evaluation ------------------------------------------------------------------------------

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} columns")
        if self.float32_inputs:
            X = X.astype(np.float32).astype(np.float64)
        return np.ascontiguousarray(X)

    def _args(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, k) for k in _ARRAYS)

    def margins(self, X: np.ndarray) -> np.ndarray:
        """(n, B) calibrated log-odds of every model for every row."""
        X = self._inputs(X)
        out = np.empty((len(X), self.n_models))
        _margins(X, self.strict_less, *self._args(), out)
        return out

    def summary(self, X: np.ndarray, log_odds: np.ndarray, low_logit: float, high_logit: float,
                parallel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the 2.5th and 97.5th percentiles of the B models' risks, and the share of models
        that would put the row in another risk group than `log_odds` (the final model's) does."""
        X = self._inputs(X)
        n = len(X)
        lo, hi, change = np.empty(n), np.empty(n), np.empty(n)
        kernel = _summary_blocks if n >= 64 else _summary
        kernel(X, self.strict_less, *self._args(), np.ascontiguousarray(log_odds, dtype=np.float64),
               float(low_logit), float(high_logit), INTERVAL[0] / 100, INTERVAL[1] / 100, lo, hi, change)
        return lo, hi, change

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        meta = np.array([self.n_models, self.n_features, int(self.strict_less), int(self.float32_inputs)])
        with open(path, "wb") as fh:  # np.savez would add ".npz" to a name without it
            np.savez_compressed(fh, meta=meta, **{k: getattr(self, k) for k in _ARRAYS})

    @classmethod
    def load(cls, path: Path) -> MarginEnsemble:
        with np.load(path, allow_pickle=False) as z:
            meta = z["meta"]
            arrays = {k: np.ascontiguousarray(z[k]) for k in _ARRAYS}
        return cls(n_models=int(meta[0]), n_features=int(meta[1]), strict_less=bool(meta[2]),
                   float32_inputs=bool(meta[3]), **arrays)


_ARRAYS = ("const", "cuts", "cut_start", "main", "main_start", "tree_model", "model_start", "node_feature", "node_cut",
           "leaf_value")
MAX_DEPTH = 8  # deeper trees would make the complete layout too large: no instability analysis then
_FAR = np.iinfo(np.int32).max  # a cut no bin exceeds (padding nodes go left)


def _heap_layout(walk: list[tuple[np.ndarray, ...]], cuts_f: list[np.ndarray], F: int) -> dict[str, np.ndarray]:
    """Complete-tree arrays of the trees that mix features (see the fields' comment)."""
    depth = max((_local_depth(t[2], t[3]) for t in walk), default=1)
    if depth > MAX_DEPTH:
        raise ValueError(f"trees of depth {depth} (> {MAX_DEPTH}) are too deep for the instability ensemble")
    n_inner, n_leaves = (1 << depth) - 1, 1 << depth
    node_feature = np.zeros((n_inner, len(walk)), dtype=np.int32)
    node_cut = np.full((n_inner, len(walk)), _FAR, dtype=np.int32)
    leaf_value = np.zeros((n_leaves, len(walk)))
    for t, (feat, cut, left, right, missing_left, value) in enumerate(walk):
        stack = [(0, 0, 0)]  # (local node, heap position, level)
        while stack:
            node, pos, level = stack.pop()
            if feat[node] < 0:
                first = (pos - n_inner) if level == depth else None
                if first is None:  # a leaf above depth D: every leaf below its heap position
                    lo = pos
                    for _ in range(depth - level):
                        lo = 2 * lo + 1
                    span = 1 << (depth - level)
                    leaf_value[lo - n_inner: lo - n_inner + span, t] = value[node]
                else:
                    leaf_value[first, t] = value[node]
                continue
            node_feature[pos, t] = feat[node] + (0 if missing_left[node] else F)
            node_cut[pos, t] = cut[node]
            stack.append((int(left[node]), 2 * pos + 1, level + 1))
            stack.append((int(right[node]), 2 * pos + 2, level + 1))
    return {"node_feature": node_feature, "node_cut": node_cut, "leaf_value": leaf_value}


def _local_depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, frontier = 0, [(0, 0)]
    while frontier:
        node, d = frontier.pop()
        depth = max(depth, d)
        if left[node] >= 0:
            frontier += [(int(left[node]), d + 1), (int(right[node]), d + 1)]
    return depth


def _leaf_of(bins: np.ndarray, feat: np.ndarray, cut: np.ndarray, left: np.ndarray, right: np.ndarray,
             missing_left: np.ndarray) -> np.ndarray:
    """The leaf (local node index) each bin of a one-feature tree ends in; bin -1 is NaN."""
    node = np.zeros(len(bins), dtype=np.int64)
    for _ in range(len(feat)):
        inner = feat[node] >= 0
        if not inner.any():
            break
        go_left = np.where(bins < 0, missing_left[node].astype(bool), bins <= cut[node])
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)
    return node


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


# The kernels take the ensemble's arrays in _ARRAYS order (A = const, cuts, cut_start, main,
# main_start, tree_model, model_start, node_feature, node_cut, leaf_value).

@njit(cache=True, fastmath=True)
def _segment_d2(bins, nf, nc, lv, lo, hi):
    """Sum over trees lo:hi (complete, depth 2) of the leaf each reaches; vectorised over trees."""
    s = 0.0
    for t in range(lo, hi):
        right = lv[3, t] if bins[nf[2, t]] > nc[2, t] else lv[2, t]
        left = lv[1, t] if bins[nf[1, t]] > nc[1, t] else lv[0, t]
        s += right if bins[nf[0, t]] > nc[0, t] else left
    return s


@njit(cache=True, fastmath=True)
def _segment_d3(bins, nf, nc, lv, lo, hi):
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
def _segment_walk(bins, nf, nc, lv, lo, hi):
    n_inner = nf.shape[0]
    s = 0.0
    for t in range(lo, hi):
        node = 0
        while node < n_inner:
            node = 2 * node + 1 + (1 if bins[nf[node, t]] > nc[node, t] else 0)
        s += lv[node - n_inner, t]
    return s


@njit(cache=True)
def _row(x, strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv, out):
    """The B calibrated margins of one row into out."""
    F = x.shape[0]
    B = const.shape[0]
    bins = np.empty(2 * F, dtype=np.int32)  # [NaN -> -1 (goes left), NaN -> huge (goes right)]
    for f in range(F):
        g = _bin(x[f], cuts, cut_start[f], cut_start[f + 1], strict_less)
        bins[f] = g
        bins[F + f] = g if g >= 0 else _HUGE
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


_HUGE = 2147483647  # the bin of NaN at a node that sends NaN right: above every cut


@njit(cache=True)
def _margins(X, strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv, out):
    for i in range(X.shape[0]):
        _row(X[i], strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv, out[i])


@njit(cache=True, inline="always")
def _risk_quantile(sorted_log_odds, q):
    """numpy's default ('linear') percentile of the risks, from the sorted log-odds (the order is
    the same; the interpolation is done on the risk scale, as np.percentile of the risks does)."""
    pos = q * (sorted_log_odds.shape[0] - 1)
    k = int(np.floor(pos))
    below = 1.0 / (1.0 + np.exp(-sorted_log_odds[k]))
    if k + 1 >= sorted_log_odds.shape[0]:
        return below
    above = 1.0 / (1.0 + np.exp(-sorted_log_odds[k + 1]))
    return below + (pos - k) * (above - below)


@njit(cache=True, inline="always")
def _group(z, low, high):
    return (1 if z >= low else 0) + (1 if z >= high else 0)


@njit(cache=True)
def _summarise_row(buf, z0, low, high, q_lo, q_hi):
    own = _group(z0, low, high)
    other = 0
    for b in range(buf.shape[0]):
        if _group(buf[b], low, high) != own:
            other += 1
    buf.sort()
    return _risk_quantile(buf, q_lo), _risk_quantile(buf, q_hi), other / buf.shape[0]


@njit(cache=True)
def _summary(X, strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv, log_odds,
             low, high, q_lo, q_hi, lo, hi, change):
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
def _bins_block(X, lo, hi, strict_less, cuts, cut_start, bins):
    """bins[f, p] and bins[F + f, p] (NaN -> -1 and NaN -> huge) of rows lo:hi."""
    F = X.shape[1]
    for p in range(hi - lo):
        for f in range(F):
            g = _bin(X[lo + p, f], cuts, cut_start[f], cut_start[f + 1], strict_less)
            bins[f, p] = g
            bins[F + f, p] = g if g >= 0 else _HUGE


@njit(cache=True, fastmath=True)
def _block_d2(bins, n, tree_model, nf, nc, lv, acc):
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
def _block_d3(bins, n, tree_model, nf, nc, lv, acc):
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
def _block_walk(bins, n, tree_model, nf, nc, lv, acc):
    n_inner = nf.shape[0]
    for t in range(tree_model.shape[0]):
        a = acc[tree_model[t]]
        for p in range(n):
            node = 0
            while node < n_inner:
                node = 2 * node + 1 + (1 if bins[nf[node, t], p] > nc[node, t] else 0)
            a[p] += lv[node - n_inner, t]


@njit(cache=True, parallel=True)
def _summary_blocks(X, strict_less, const, cuts, cut_start, main, main_start, tree_model, model_start, nf, nc, lv,
                    log_odds, low, high, q_lo, q_hi, lo, hi, change):
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
