"""The B bootstrap models of the development-instability analysis, compiled for serving.

Why a form of its own: B >= 200 refits of a 300-tree model are 60,000 trees; walking them node
by node, or keeping B leaf tables, costs milliseconds a patient. Here every tree that splits on one
feature only (every stump, and the deeper trees that split one feature twice) is a step function of
that feature, so all of them, for all B models, collapse into one table per feature:
`main[f][bin, b]`, where `bin` is the patient's position among every threshold any model uses on
that feature. The trees that mix features (most trees of depth 2 or 3) stay trees, stored as
complete trees in heap order so that the kernels (`models.ensemble_kernels`) evaluate them without
branches: for one patient, vectorised over each model's trees; for a batch, over blocks of
patients. Each model's Platt calibration (a_b + s_b * margin) is folded into the values, so the
kernels return calibrated log-odds directly. With depth-1 models a patient costs F binary searches
and F rows of B additions; with deeper models the mixed trees dominate (bench/instability.md).

Decisions follow the library's rule exactly as `models.trees` does (xgboost: x < t in float32;
scikit-learn: x <= t) and NaN follows each node's default branch: `margins` equals each model's
own calibrated margin to rounding (tests check it against `models.explain.tree_margin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from models.trees import FlatTrees

if TYPE_CHECKING:
    from models.ensemble_kernels import KernelArrays

ENSEMBLE_FILE = "instability.npz"
# the arrays the kernels take, in their order (models.ensemble_kernels, imported when first used: a
# bundle without bootstrap models never loads numba)
ARRAYS = ("const", "cuts", "cut_start", "main", "main_start", "tree_model", "model_start", "node_feature", "node_cut",
           "leaf_value")
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
        return int(sum(getattr(self, k).nbytes for k in ARRAYS))

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

    def _args(self) -> KernelArrays:
        """The arrays in `ARRAYS` order, as a tuple of known length (so that the kernels' calls are checked)."""
        return (self.const, self.cuts, self.cut_start, self.main, self.main_start, self.tree_model, self.model_start,
                self.node_feature, self.node_cut, self.leaf_value)

    def margins(self, X: np.ndarray) -> np.ndarray:
        """(n, B) calibrated log-odds of every model for every row."""
        X = self._inputs(X)
        out = np.empty((len(X), self.n_models))
        from models.ensemble_kernels import margins

        margins(X, self.strict_less, *self._args(), out)
        return out

    def summary(self, X: np.ndarray, log_odds: np.ndarray, low_logit: float, high_logit: float,
                parallel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the 2.5th and 97.5th percentiles of the B models' risks, and the share of models
        that would put the row in another risk group than `log_odds` (the final model's) does.
        `parallel`: blocks of 256 rows on numba's threads (NUMBA_NUM_THREADS), else on this thread."""
        X = self._inputs(X)
        n = len(X)
        lo, hi, change = np.empty(n), np.empty(n), np.empty(n)
        from models.ensemble_kernels import summary, summary_blocks, summary_blocks_serial

        kernel = summary if n < 64 else summary_blocks if parallel else summary_blocks_serial
        kernel(X, self.strict_less, *self._args(), np.ascontiguousarray(log_odds, dtype=np.float64),
               float(low_logit), float(high_logit), INTERVAL[0] / 100, INTERVAL[1] / 100, lo, hi, change)
        return lo, hi, change

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        meta = np.array([self.n_models, self.n_features, int(self.strict_less), int(self.float32_inputs)])
        with open(path, "wb") as fh:  # np.savez would add ".npz" to a name without it
            np.savez_compressed(fh, meta=meta, **{k: getattr(self, k) for k in ARRAYS})

    @classmethod
    def load(cls, path: Path) -> MarginEnsemble:
        with np.load(path, allow_pickle=False) as z:
            meta = z["meta"]
            arrays = {k: np.ascontiguousarray(z[k]) for k in ARRAYS}
        return cls(n_models=int(meta[0]), n_features=int(meta[1]), strict_less=bool(meta[2]),
                   float32_inputs=bool(meta[3]), **arrays)


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


def warm_up() -> None:
    """Compile the kernels into numba's on-disk cache (`make install` calls this), so that the
    first model load of a new installation does not spend seconds compiling."""
    B, F = 2, 1
    tiny = MarginEnsemble(
        n_models=B, n_features=F, strict_less=True, float32_inputs=True, const=np.zeros(B),
        cuts=np.zeros(1), cut_start=np.array([0, 1], dtype=np.int64), main=np.zeros(3 * B),
        main_start=np.zeros(F, dtype=np.int64), tree_model=np.zeros(0, dtype=np.int32),
        model_start=np.zeros(B + 1, dtype=np.int64), node_feature=np.zeros((3, 0), dtype=np.int32),
        node_cut=np.zeros((3, 0), dtype=np.int32), leaf_value=np.zeros((4, 0)),
    )
    for n, parallel in ((1, False), (64, False), (64, True)):
        X = np.zeros((n, F))
        tiny.margins(X)
        tiny.summary(X, np.zeros(n), -1.0, 0.0, parallel=parallel)

