"""The saved model bundle: the trees, their calibration, risk-group thresholds and training ranges.

A bundle is a directory (`bundle.json` + the estimator file) that MLflow stores as the model's
artifact. Serving loads it directly, so the hot path needs neither pyfunc nor pandas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from models.explain import TreeExplainer
from pipeline.contract import CONTRACT_VERSION, FEATURE_NAMES
from pipeline.features import GROUP, MATRIX_NAMES

BUNDLE_FILE = "bundle.json"
RISK_GROUPS = ("low", "intermediate", "high")


@dataclass
class Explained:
    """Calibrated log-odds = base + contributions.sum(axis=1), exactly (float64)."""

    log_odds: np.ndarray
    risk: np.ndarray
    base: np.ndarray
    contributions: np.ndarray  # (n, n_features) in FEATURE_NAMES order, calibrated log-odds
    raw_margin: np.ndarray


@dataclass
class ModelBundle:
    kind: str
    estimator: Any
    calibration_intercept: float
    calibration_slope: float
    low_threshold: float
    high_threshold: float
    outcome: str
    training_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    matrix_names: tuple[str, ...] = MATRIX_NAMES
    feature_names: tuple[str, ...] = FEATURE_NAMES
    contract_version: str = CONTRACT_VERSION
    nthread: int = 1
    # documents shipped inside the bundle directory (the model card), read at load
    documents: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _explainer: TreeExplainer | None = field(default=None, repr=False, compare=False)

    @property
    def explainer(self) -> TreeExplainer:
        if self._explainer is None:
            self._explainer = TreeExplainer(self.kind, self.estimator, nthread=self.nthread)
        return self._explainer

    def explain(self, X: np.ndarray) -> Explained:
        """Calibrated risk with its SHAP explanation, for a matrix in MATRIX_NAMES order."""
        contribs, bias = self.explainer.contributions(X)
        slope, intercept = self.calibration_slope, self.calibration_intercept
        grouped = (contribs @ GROUP) * slope
        base = intercept + slope * bias
        raw = bias + contribs.sum(axis=1)
        log_odds = base + grouped.sum(axis=1)
        risk = 1.0 / (1.0 + np.exp(-log_odds))
        return Explained(log_odds, risk, base, grouped, raw)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated risk without the explanation (bulk evaluation)."""
        log_odds = self.calibration_intercept + self.calibration_slope * self.explainer.margin(X)
        return 1.0 / (1.0 + np.exp(-log_odds))

    def risk_group(self, risk: np.ndarray) -> np.ndarray:
        idx = (np.asarray(risk) >= self.low_threshold).astype(int) + (
            np.asarray(risk) >= self.high_threshold
        ).astype(int)
        return np.asarray(RISK_GROUPS, dtype=object)[idx]

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=False)
        if self.kind == "xgboost":
            estimator_file = "model.ubj"
            self.estimator.save_model(str(path / estimator_file))
        else:
            import joblib

            estimator_file = "model.joblib"
            joblib.dump(self.estimator, path / estimator_file)
        meta = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("estimator", "_explainer", "nthread", "documents")
        }
        meta["estimator_file"] = estimator_file
        (path / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        return path

    @classmethod
    def load(cls, path: Path, nthread: int = 1) -> "ModelBundle":
        path = Path(path)
        meta = json.loads((path / BUNDLE_FILE).read_text())
        estimator_file = meta.pop("estimator_file")
        if tuple(meta["matrix_names"]) != MATRIX_NAMES:
            raise ValueError(
                "model bundle was trained on another feature encoding than this code "
                f"(contract v{meta.get('contract_version')}); retrain it"
            )
        if meta["kind"] == "xgboost":
            import xgboost as xgb

            estimator: Any = xgb.Booster()
            estimator.load_model(str(path / estimator_file))
        else:
            import joblib

            estimator = joblib.load(path / estimator_file)
        meta["training_ranges"] = {k: tuple(v) for k, v in meta["training_ranges"].items()}
        meta["matrix_names"] = tuple(meta["matrix_names"])
        meta["feature_names"] = tuple(meta["feature_names"])
        documents = {p.name: p.read_text(encoding="utf-8") for p in path.glob("model_card.*")}
        return cls(estimator=estimator, nthread=nthread, documents=documents, **meta)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
