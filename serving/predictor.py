"""The hot path: validated request -> numpy row -> margin and contributions -> answer.

No DataFrame, no pandera, no pyfunc here: pydantic has already enforced the contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.artifact import ModelBundle
from pipeline.contract import FEATURES, FEATURES_BY_NAME
from pipeline.features import N_MATRIX, encode_record
from pipeline.registry import ResolvedModel

_OPTIONAL = tuple(f.name for f in FEATURES if not f.required)
_FLOATS = tuple(f.name for f in FEATURES if f.kind == "float")


@dataclass
class Predictor:
    bundle: ModelBundle
    model: ResolvedModel

    def __post_init__(self) -> None:
        self.model_ref = {"name": self.model.name, "version": self.model.version, "run_id": self.model.run_id}
        self.ranges = dict(self.bundle.training_ranges)
        self.names = self.bundle.feature_names
        self.units = tuple(FEATURES_BY_NAME[n].unit for n in self.names)

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        X = np.empty((len(records), N_MATRIX), dtype=np.float64)
        for i, rec in enumerate(records):
            encode_record(rec, X[i])
        ex = self.bundle.explain(X)
        groups = self.bundle.risk_group(ex.risk)
        out = []
        for i, rec in enumerate(records):
            contribs = ex.contributions[i]
            order = np.argsort(-np.abs(contribs), kind="stable")
            out.append(
                {
                    "risk": float(ex.risk[i]),
                    "risk_group": str(groups[i]),
                    "log_odds": float(ex.log_odds[i]),
                    "explanation": {
                        "base_log_odds": float(ex.base[i]),
                        "contributions": [
                            {
                                "feature": self.names[j],
                                "value": rec.get(self.names[j]),
                                "unit": self.units[j],
                                "log_odds": float(contribs[j]),
                            }
                            for j in order
                        ],
                    },
                    "model": self.model_ref,
                    "warnings": self.warnings(rec),
                }
            )
        return out

    def warnings(self, rec: dict[str, Any]) -> list[str]:
        """Missing optional inputs and values outside the development data (never the value itself)."""
        out = []
        missing = [n for n in _OPTIONAL if rec.get(n) is None]
        if missing:
            out.append(
                "not provided, handled as missing by the model: " + ", ".join(missing)
            )
        for name in _FLOATS:
            value = rec.get(name)
            bounds = self.ranges.get(name)
            if value is None or bounds is None or (isinstance(value, float) and math.isnan(value)):
                continue
            lo, hi = bounds
            if value < lo or value > hi:
                unit = FEATURES_BY_NAME[name].unit
                out.append(
                    f"{name} is outside the range seen in training (1st-99th percentile "
                    f"{lo:.4g}-{hi:.4g} {unit}); the estimate is less certain"
                )
        return out
