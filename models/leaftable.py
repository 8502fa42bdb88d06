"""Exact path-dependent TreeSHAP from precomputed leaf tables, in plain numpy.

Why: `models.treeshap` walks every tree for every row (Lundberg's Algorithm 2 in numba): too
slow for batch scoring, and it puts numba on the serving path. As in Fast TreeSHAP v2 (Yang
2021), a leaf's contribution to feature i depends only on which of its path's unique features the
row follows (o_j, 0/1) and on the path's cover fractions (z_j):

    phi_i += v * (o_i - z_i) * sum_{S in U-i} |S|!(|U|-|S|-1)!/|U|! prod_{S} o_j prod_{U-S-i} z_j

so it can be tabulated once per model, and scoring a row becomes comparisons, table look-ups and
sums, vectorised over rows. Each tree is cut into groups (a subtree of height <= 2 plus its
ancestors); a group's table is indexed by the bits of its split nodes, so one look-up per
(group, feature) gives the summed contribution of all the group's leaves. A bit is
`[X, -X, NaN][:, column] <= threshold`, which encodes the library's comparison rule (xgboost
x < t in float32, scikit-learn x <= t) and each node's default direction for NaN in one compare.

The values equal `models.treeshap.shap_values` to rounding (tests check it, and xgboost's own
`pred_contribs`). Deep trees make the tables exponential: `LeafTables.build` then raises
`TablesTooLarge` (`LeafTables.try_build` returns None) and the caller keeps `models.treeshap`.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # not imported at run time: models.treeshap imports numba
    from scipy.sparse import csr_matrix

    from models.treeshap import FlatTrees

_Groups = list[tuple[list[int], list[int]]]  # per group: split nodes (its bits), leaves
_Paths = dict[int, list[tuple[int, bool]]]  # per leaf: (node, went left) from the root
# per leaf: group, leaf node, slot of each unique path feature, their cover fractions, and per
# path node (bit of the group, bit value that follows the path, index among the unique features)
_Leaf = tuple[int, int, list[int], list[float], list[tuple[int, int, int]]]

# Building takes ~7x the final table's bytes at its peak (index arrays and temporaries): 32 MB of
# tables (300 trees of depth 6 take 13 MB) keep a load or reload under ~250 MB; larger models
# use the compiled kernel instead.
MAX_TABLE_BYTES = 32 * 2**20
MAX_GROUP_BITS = 16  # split nodes per group (a pattern is a uint16)
# rows per chunk = CHUNK_LOOKUPS // look-ups per row, clipped to [128, 512]: measured (noisy)
# optimum 256-512 rows for 100 depth-2 trees, 64-128 for 300 trees of depth 4 and 6
CHUNK_LOOKUPS = 1 << 19
PARALLEL_MIN_ROWS = 8192  # below this, threads=2 runs on one thread
_BUILD_ELEMENTS = 1 << 22  # bounds the temporary arrays of `build`

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class TablesTooLarge(ValueError):
    """The trees are too deep for leaf tables: use `models.treeshap.shap_values` instead."""


@dataclass(frozen=True, eq=False)
class LeafTables:
    """Leaf tables of one model; `shap_values(X)` returns what `models.treeshap.shap_values` does."""

    n_features: int
    expected_value: float
    n_groups: int
    max_bits: int
    # bit b of group g is  xa[bit_column[b, g]] <= bit_threshold[b, g]  with xa = [X, -X, NaN]
    bit_column: np.ndarray  # (B, G) intp; unused bits read the NaN column (always 0)
    bit_threshold: np.ndarray  # (B, G, 1) float32 (xgboost) or float64
    bit_weight: np.ndarray  # (B, 1, 1) uint8 or uint16: 1 << b
    bit_value: np.ndarray  # (B,) intp: 1 << b
    # look-up columns, sorted by feature: value = table[column_start[c] + pattern[column_group[c]]]
    column_group: np.ndarray  # (C,) intp
    column_start: np.ndarray  # (C, 1) intp
    table: np.ndarray  # (sum over columns of 2^B_g,) float64
    features: np.ndarray  # (F',) intp: the features that have columns
    feature_start: np.ndarray  # (F',) intp: first column of each of them
    reduce: csr_matrix  # (F', C) 0/1: sums a chunk's columns per feature
    chunk_rows: int

    def __repr__(self) -> str:  # the arrays are long: say what the tables are, not what they hold
        return (
            f"LeafTables(n_features={self.n_features}, n_groups={self.n_groups}, max_bits={self.max_bits}, "
            f"nbytes={self.nbytes}, chunk_rows={self.chunk_rows})"
        )

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def build(cls, trees: FlatTrees, *, max_bytes: int = MAX_TABLE_BYTES, group_height: int = 2) -> LeafTables:
        """Tabulate `trees`; raises TablesTooLarge if the tables would exceed `max_bytes`.

        `group_height`: subtrees of at most this height share one table (2: one look-up per
        depth-2 tree; 3 makes the tables of deeper trees ~4x larger for ~2x fewer look-ups).
        """
        groups, paths = _plan(trees, group_height)
        feature = trees.feature
        n_bits = [len(bits) for bits, _ in groups]
        if max(n_bits, default=0) > MAX_GROUP_BITS:
            raise TablesTooLarge(f"a group has {max(n_bits)} split nodes (> {MAX_GROUP_BITS}): too deep")
        group_feats = [sorted({int(feature[n]) for n in bits}) for bits, _ in groups]
        size = 8 * sum(len(f) << b for f, b in zip(group_feats, n_bits))
        if size > max_bytes:
            raise TablesTooLarge(f"leaf tables would take {size / 2**20:.1f} MB (> {max_bytes / 2**20:.1f})")
        return cls._tabulate(trees, groups, paths, group_feats)

    @classmethod
    def try_build(cls, trees: FlatTrees, **kwargs: Any) -> LeafTables | None:
        """`build`, or None when the tables would be too large (use models.treeshap then)."""
        try:
            return cls.build(trees, **kwargs)
        except TablesTooLarge:
            return None

    @property
    def nbytes(self) -> int:
        return int(
            self.table.nbytes + self.column_group.nbytes + self.column_start.nbytes + self.bit_column.nbytes
            + self.bit_threshold.nbytes + self.reduce.data.nbytes + self.reduce.indices.nbytes
        )

    @classmethod
    def _tabulate(
        cls, trees: FlatTrees, groups: _Groups, paths: _Paths, group_feats: list[list[int]]
    ) -> LeafTables:
        from scipy import sparse  # only to build: the serving process has it already (scikit-learn)

        feature, cover, value = trees.feature, trees.cover, trees.value
        n_features, n_groups = trees.n_features, len(groups)

        # group tables while building: gtab[goff[g] + pattern * S_g + slot], slot in group_feats[g]
        n_slots = np.array([len(f) for f in group_feats], dtype=np.intp)
        n_bits = np.array([len(bits) for bits, _ in groups], dtype=np.intp)
        sizes = n_slots << n_bits
        goff = np.zeros(n_groups, dtype=np.intp)
        np.cumsum(sizes[:-1], out=goff[1:])
        gtab = np.zeros(int(sizes.sum()))

        batches: dict[tuple[int, int], list[_Leaf]] = {}  # by (unique features, group bits)
        for g, (bits, leaves) in enumerate(groups):
            where = {node: b for b, node in enumerate(bits)}
            slot_of = {f: s for s, f in enumerate(group_feats[g])}
            for leaf in leaves:
                uniq: list[int] = []
                z: list[float] = []
                steps: list[tuple[int, int, int]] = []
                for node, went_left in paths[leaf]:
                    f = int(feature[node])
                    child = trees.left[node] if went_left else trees.right[node]
                    if f in uniq:
                        z[uniq.index(f)] *= cover[child] / cover[node]
                    else:
                        uniq.append(f)
                        z.append(cover[child] / cover[node])
                    # bit 1 = left when NaN goes right, = right when NaN goes left
                    follow = 1 if went_left != bool(trees.missing_left[node]) else 0
                    steps.append((where[node], follow, uniq.index(f)))
                slots = [slot_of[f] for f in uniq]
                batches.setdefault((len(uniq), len(bits)), []).append((g, leaf, slots, z, steps))

        for (k, b), members in batches.items():
            if k == 0:
                continue  # a tree that is a single leaf: no contributions
            per = max(1, _BUILD_ELEMENTS // ((1 << b) * max(k, 2) * k))
            for lo in range(0, len(members), per):
                _accumulate(gtab, goff, n_slots, members[lo : lo + per], k, b, value)

        # run-time layout: one block of 2^B_g values per (group, feature), blocks sorted by feature
        cols = [(f, g, s) for g, feats in enumerate(group_feats) for s, f in enumerate(feats)]
        cols.sort(key=lambda c: (c[0], c[1]))
        column_group = np.array([g for _, g, _ in cols], dtype=np.intp)
        col_feature = np.array([f for f, _, _ in cols], dtype=np.intp)
        block = (1 << n_bits)[column_group]
        column_start = np.zeros(len(cols), dtype=np.intp)
        np.cumsum(block[:-1], out=column_start[1:])
        # entry (column c, pattern p) comes from gtab[goff[g] + p * S_g + s]
        pattern = np.arange(int(block.sum()), dtype=np.intp) - np.repeat(column_start, block)
        src_g = np.repeat(column_group, block)
        src_s = np.repeat(np.array([s for _, _, s in cols], dtype=np.intp), block)
        table = np.ascontiguousarray(gtab[goff[src_g] + pattern * n_slots[src_g] + src_s])
        features, feature_start = np.unique(col_feature, return_index=True)
        which = np.searchsorted(features, col_feature)
        reduce = sparse.csr_matrix(
            (np.ones(len(cols)), (which, np.arange(len(cols)))), shape=(len(features), len(cols))
        )

        # bits: xa = [X, -X, NaN]; bit = xa[column] <= threshold
        dtype = np.float32 if trees.float32_inputs else np.float64
        max_bits = max(1, int(n_bits.max(initial=0)))
        bit_column = np.full((max_bits, n_groups), 2 * n_features, dtype=np.intp)
        bit_threshold = np.zeros((max_bits, n_groups, 1), dtype=dtype)
        neg_inf = dtype(-np.inf)
        for g, (bits, _) in enumerate(groups):
            for b, node in enumerate(bits):
                f, t = int(feature[node]), dtype(trees.threshold[node])
                if not trees.missing_left[node]:  # bit 1 = left: x < t (xgboost), x <= t (sklearn)
                    bit_column[b, g] = f
                    bit_threshold[b, g, 0] = np.nextafter(t, neg_inf) if trees.strict_less else t
                else:  # bit 1 = right: x >= t <=> -x <= -t; x > t <=> -x < -t
                    bit_column[b, g] = n_features + f
                    bit_threshold[b, g, 0] = -t if trees.strict_less else np.nextafter(-t, neg_inf)
        weight_dtype = np.uint8 if max_bits <= 8 else np.uint16
        bit_weight = (1 << np.arange(max_bits)).astype(weight_dtype)[:, None, None]

        chunk_rows = int(np.clip(CHUNK_LOOKUPS // max(1, len(cols)), 128, 512))
        return cls(
            n_features=n_features,
            expected_value=float(trees.expected_value),
            n_groups=n_groups,
            max_bits=max_bits,
            bit_column=bit_column,
            bit_threshold=bit_threshold,
            bit_weight=bit_weight,
            bit_value=(1 << np.arange(max_bits)).astype(np.intp),
            column_group=column_group,
            column_start=column_start[:, None].copy(),
            table=table,
            features=features.astype(np.intp),
            feature_start=feature_start.astype(np.intp),
            reduce=reduce,
            chunk_rows=chunk_rows,
        )

    # -- scoring ---------------------------------------------------------------------------------

    def shap_values(self, X: np.ndarray, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
        """(phi (n, n_features), margin (n,), expected value): margin == expected + phi.sum(1).

        `threads=2` splits batches of >= PARALLEL_MIN_ROWS rows between the calling thread and
        one more (numpy releases the GIL in most of the work); not faster on a busy 2-core host.
        Safe to call from several threads at once.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} columns")
        n = len(X)
        if n == 1:
            phi = self._one_row(X[0])
        elif threads > 1 and n >= PARALLEL_MIN_ROWS:
            phi = np.zeros((n, self.n_features))
            half = n // 2
            other = _executor().submit(self._rows, X, phi, half, n)
            self._rows(X, phi, 0, half)
            other.result()
        else:
            phi = np.zeros((n, self.n_features))
            self._rows(X, phi, 0, n)
        margin = self.expected_value + phi.sum(axis=1)
        return phi, margin, self.expected_value

    def _rows(self, X: np.ndarray, phi: np.ndarray, start: int, stop: int) -> None:
        step = self.chunk_rows
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            phi[lo:hi, self.features] = self._chunk(X[lo:hi]).T

    def _one_row(self, x: np.ndarray) -> np.ndarray:
        """`_chunk` for one row with 1-d arrays: half the numpy calls' overhead."""
        threshold = self.bit_threshold[:, :, 0]
        x = x.astype(threshold.dtype)
        xa = np.concatenate((x, -x, np.full(1, np.nan, dtype=threshold.dtype)))
        pattern = self.bit_value @ (xa[self.bit_column] <= threshold)  # (G,)
        values = self.table.take(pattern[self.column_group] + self.column_start[:, 0])
        phi = np.zeros((1, self.n_features))
        phi[0, self.features] = np.add.reduceat(values, self.feature_start)
        return phi

    def _chunk(self, X: np.ndarray) -> np.ndarray:
        """(F', n) contributions of the features that have columns, for n rows (transposed)."""
        n, f = X.shape
        xa = np.empty((2 * f + 1, n), dtype=self.bit_threshold.dtype)
        xa[:f] = X.T
        np.negative(xa[:f], out=xa[f : 2 * f])
        xa[2 * f] = np.nan
        bits = xa[self.bit_column] <= self.bit_threshold  # (B, G, n)
        pattern = np.multiply(bits, self.bit_weight).sum(axis=0, dtype=self.bit_weight.dtype)  # (G, n)
        index = pattern[self.column_group] + self.column_start  # (C, n)
        values = self.table.take(index)
        return self.reduce @ values


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="leaftable")  # plus the calling thread
        return _pool


def _plan(trees: FlatTrees, group_height: int) -> tuple[_Groups, _Paths]:
    """Cut every tree into groups: (split nodes = ancestors + inner nodes, leaves) of each subtree
    of height <= group_height whose parent is higher; and each leaf's path as (node, went_left)."""
    feature, left, right = trees.feature, trees.left, trees.right
    groups: list[tuple[list[int], list[int]]] = []
    paths: dict[int, list[tuple[int, bool]]] = {}
    for root in trees.roots.tolist():
        order: list[int] = []
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
        while stack:
            node, path = stack.pop()
            order.append(node)
            if feature[node] < 0:
                paths[node] = path
            else:
                stack.append((int(right[node]), path + [(node, False)]))
                stack.append((int(left[node]), path + [(node, True)]))
        height: dict[int, int] = {}
        for node in reversed(order):  # children before parents
            if feature[node] < 0:
                height[node] = 0
            else:
                height[node] = 1 + max(height[int(left[node])], height[int(right[node])])
        todo: list[tuple[int, list[int]]] = [(root, [])]
        while todo:
            node, ancestors = todo.pop()
            if height[node] > group_height:
                todo.append((int(right[node]), ancestors + [node]))
                todo.append((int(left[node]), ancestors + [node]))
                continue
            inner: list[int] = []
            leaves: list[int] = []
            sub = [node]
            while sub:
                u = sub.pop()
                if feature[u] < 0:
                    leaves.append(u)
                else:
                    inner.append(u)
                    sub += [int(right[u]), int(left[u])]
            groups.append((ancestors + inner, leaves))
    return groups, paths


def _leaf_tables(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(L, 2^k, k): v * (o_i - z_i) * sum_{S in U-i} |S|!(k-|S|-1)!/k! prod_S o_j prod_{U-S-i} z_j.

    z: (L, k) cover fractions of each leaf's k unique path features; v: (L,) leaf values; bit j
    of the mask (middle axis) is o_j.
    """
    n_leaves, k = z.shape
    o = ((np.arange(1 << k)[:, None] >> np.arange(k)) & 1).astype(np.float64)  # (2^k, k)
    w = np.array([math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) for s in range(k)])
    out = np.empty((n_leaves, 1 << k, k))
    for i in range(k):
        # coefficients, by degree of y, of prod_{j != i} (z_j + o_j y): degree s <-> |S| = s
        c = np.zeros((n_leaves, 1 << k, k))
        c[:, :, 0] = 1.0
        for j in range(k):
            if j != i:
                nxt = c * z[:, None, j, None]
                nxt[:, :, 1:] += c[:, :, :-1] * o[None, :, j, None]
                c = nxt
        out[:, :, i] = v[:, None] * (o[None, :, i] - z[:, i, None]) * (c @ w)
    return out


def _accumulate(gtab: np.ndarray, goff: np.ndarray, n_slots: np.ndarray, members: list[_Leaf], k: int, b: int,
                value: np.ndarray) -> None:
    """Add the leaves in `members` (all with k unique features, in groups of b bits) to gtab."""
    n = len(members)
    groups = np.array([m[0] for m in members], dtype=np.intp)
    leaves = np.array([m[1] for m in members], dtype=np.intp)
    slots = np.array([m[2] for m in members], dtype=np.intp)  # (L, k)
    z = np.array([m[3] for m in members], dtype=np.float64)  # (L, k)
    depth = max(len(m[4]) for m in members)
    # path steps padded with a step on feature k (ignored) that always follows
    steps = np.zeros((n, depth, 3), dtype=np.intp)
    steps[:, :, 2] = k
    for i, m in enumerate(members):
        steps[i, : len(m[4])] = m[4]
    leaf_table = _leaf_tables(z, value[leaves])  # (L, 2^k, k)
    pattern = np.arange(1 << b, dtype=np.intp)
    follows = ((pattern[None, None, :] >> steps[:, :, 0:1]) & 1) == steps[:, :, 1:2]  # (L, D, P)
    mask = np.zeros((n, 1 << b), dtype=np.intp)
    for j in range(k):
        o_j = np.all(follows | (steps[:, :, 2:3] != j), axis=1)  # (L, P)
        mask |= o_j.astype(np.intp) << j
    contrib = np.take_along_axis(leaf_table, mask[:, :, None], axis=1)  # (L, P, k)
    target = (goff[groups][:, None, None] + pattern[None, :, None] * n_slots[groups][:, None, None]
              + slots[:, None, :])
    gtab += np.bincount(target.ravel(), weights=contrib.ravel(), minlength=len(gtab))
