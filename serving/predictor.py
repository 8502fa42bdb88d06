"""The hot path: validated request -> numpy row -> margin and contributions -> answer.

No DataFrame, no pandera, no pyfunc here: pydantic has already enforced the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.artifact import ModelBundle
from core.contract import FEATURES, FEATURES_BY_NAME
from core.features import MATRIX_NAMES, N_MATRIX, encode_record
from models.registry import ResolvedModel

_OPTIONAL = tuple(f.name for f in FEATURES if not f.required)
assert all(f.kind == "float" for f in FEATURES if not f.required), "warnings() reads missing values from the matrix"
_FLOATS = tuple(f.name for f in FEATURES if f.kind == "float")


@dataclass
class Predictor:
    bundle: ModelBundle
    model: ResolvedModel

    def __post_init__(self) -> None:
        self.model_ref: dict[str, Any] = {"name": self.model.name, "version": self.model.version, "run_id": self.model.run_id}
        update = self.bundle.metadata.get("update")
        if update:  # a local update of another version says so in every answer
            self.model_ref["update"] = {"method": update["method"], "parent_version": update["parent_version"]}
        self.ranges = dict(self.bundle.training_ranges)
        self.names = self.bundle.feature_names
        self.units = tuple(FEATURES_BY_NAME[n].unit for n in self.names)
        column = {name: j for j, name in enumerate(MATRIX_NAMES)}  # a float's column is its own name
        self._optional_cols = [column[n] for n in _OPTIONAL]
        ranged = [n for n in _FLOATS if n in self.ranges]
        self._range_cols = [column[n] for n in ranged]
        self._bounds = (
            np.array([self.ranges[n][0] for n in ranged], dtype=np.float64),
            np.array([self.ranges[n][1] for n in ranged], dtype=np.float64),
        )
        self._range_messages = [
            f"{n} is outside the range seen in training (1st-99th percentile "
            f"{self.ranges[n][0]:.4g}-{self.ranges[n][1]:.4g} {FEATURES_BY_NAME[n].unit}); the estimate is less certain"
            for n in ranged
        ]
        self._models = self.bundle.instability.n_models if self.bundle.instability is not None else 0
        if self._models:  # compile (or load from numba's cache) the kernels now, not on the first request
            self.bundle.uncertainty(np.zeros((1, N_MATRIX)), np.zeros(1))
        gate = self.bundle.metadata.get("gate") or {}
        self.ungated = bool(gate.get("ungated"))
        self.gate_warning = (
            f"this model did not pass the quality gate ({gate.get('reason', 'no reason recorded')}) and is served "
            "only because it was registered with ALLOW_UNGATED=1: treat its risks with extra caution"
            if self.ungated else None
        )

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        X = np.empty((len(records), N_MATRIX), dtype=np.float64)
        for i, rec in enumerate(records):
            encode_record(rec, X[i])
        ex = self.bundle.explain(X)
        warnings = self.warnings(X)
        groups = self.bundle.risk_group(ex.risk).tolist()
        uncertainty = self.uncertainty(X, ex.log_odds)
        # sort and convert whole arrays at once: Python floats and ints from .tolist(), not per element
        order = np.argsort(-np.abs(ex.contributions), axis=1, kind="stable")
        ordered = np.take_along_axis(ex.contributions, order, axis=1).tolist()
        order_l = order.tolist()
        risk, log_odds, base = ex.risk.tolist(), ex.log_odds.tolist(), ex.base.tolist()
        names, units = self.names, self.units
        out = []
        for i, rec in enumerate(records):
            out.append(
                {
                    "risk": risk[i],
                    "risk_group": groups[i],
                    "log_odds": log_odds[i],
                    "uncertainty": uncertainty[i],
                    "explanation": {
                        "base_log_odds": base[i],
                        "contributions": [
                            {"feature": names[j], "value": rec.get(names[j]), "unit": units[j], "log_odds": v}
                            for j, v in zip(order_l[i], ordered[i])
                        ],
                    },
                    "model": self.model_ref,
                    "warnings": warnings[i],
                }
            )
        return out

    def uncertainty(self, X: np.ndarray, log_odds: np.ndarray) -> list[dict[str, Any] | None]:
        """Per row: the 95% interval of the bootstrap models' risks and P(another risk group)."""
        unc = self.bundle.uncertainty(X, log_odds)  # on this worker's thread: the workers are the parallelism
        if unc is None:
            return [None] * len(X)
        lo, hi, change = (a.tolist() for a in unc)
        models = self._models
        return [
            {"interval": (lo[i], hi[i]), "level": 0.95, "risk_group_change_probability": change[i],
             "bootstrap_models": models}
            for i in range(len(X))
        ]

    def warnings(self, X: np.ndarray) -> list[list[str]]:
        """Per row: missing optional inputs and values outside the development data (never the value).

        From the encoded matrix, vectorised: every optional feature is a float, which the matrix
        holds as given (NaN when missing)."""
        missing = np.isnan(X[:, self._optional_cols])
        lo, hi = self._bounds
        with np.errstate(invalid="ignore"):
            outside = (X[:, self._range_cols] < lo) | (X[:, self._range_cols] > hi)
        first = [self.gate_warning] if self.gate_warning else []
        out: list[list[str]] = [list(first) for _ in range(len(X))]
        for i in np.flatnonzero(missing.any(axis=1) | outside.any(axis=1)).tolist():
            row = out[i]
            names = [n for n, m in zip(_OPTIONAL, missing[i]) if m]
            if names:
                row.append("not provided, handled as missing by the model: " + ", ".join(names))
            row.extend(self._range_messages[k] for k in np.flatnonzero(outside[i]).tolist())
        return out
