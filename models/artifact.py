"""The saved model bundle: the trees, their calibration, risk-group thresholds and training ranges.

A bundle is a directory (`bundle.json` + the estimator file) that MLflow stores as the model's
artifact. Serving loads it directly, so the hot path needs neither pyfunc nor pandas.

An xgboost booster is saved in xgboost's JSON format (`model.json`), which xgboost loads as it
loads its binary one and which `models.trees.from_xgboost_json` reads without xgboost: a loaded
bundle explains from those trees, and the `xgboost.Booster` itself is loaded (and xgboost imported)
only when something asks for `bundle.estimator` (`predict_proba`, training, evaluation, re-saving).
Older bundles (`model.ubj`) still load, through xgboost.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.calibration import calibrated_explanation, calibrated_log_odds, risk_of
from models.ensemble import ENSEMBLE_FILE, MarginEnsemble
from models.explain import TreeExplainer
from models.linear import LinearEnsemble, LinearExplainer, is_linear_ensemble
from core.contract import CONTRACT_VERSION, FEATURE_NAMES
from core.features import GROUP, MATRIX_NAMES

if TYPE_CHECKING:
    from models.trees import FlatTrees

BUNDLE_FILE = "bundle.json"
XGBOOST_FILE = "model.json"  # older bundles: model.ubj
RISK_GROUPS = ("low", "intermediate", "high")
_LOAD_LOCK = threading.Lock()


class BundleError(ValueError):
    """A bundle that must not be served; the message names the file (and the caller adds the version)."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (hex), read in blocks by the standard library."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_digests(path: Path) -> dict[str, str]:
    """sha256 of every file under a bundle directory, by its relative POSIX path (what registration
    records in the version's tag and loading checks)."""
    path = Path(path)
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


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
    estimator: Any  # the library's model; a property (below): loaded on first use after `load`
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
    _explainer: TreeExplainer | LinearExplainer | None = field(default=None, repr=False, compare=False)
    # set by `load` when the estimator is not loaded yet: its flattened trees and its saved bytes
    _trees: FlatTrees | None = field(default=None, repr=False, compare=False)
    _estimator_raw: bytes | None = field(default=None, repr=False, compare=False)
    # the B bootstrap models of the instability analysis (models.ensemble), or None
    instability: MarginEnsemble | LinearEnsemble | None = field(default=None, repr=False, compare=False)

    @property
    def explainer(self) -> TreeExplainer | LinearExplainer:
        if self._explainer is None:
            if self.kind == LinearExplainer.kind:
                explainer: TreeExplainer | LinearExplainer = LinearExplainer(self.estimator)
            elif self._trees is not None:
                explainer = TreeExplainer.from_trees(self.kind, self._trees, nthread=self.nthread)
                if self.__dict__.get("_estimator") is not None:
                    explainer.attach(self.__dict__["_estimator"])
            else:
                explainer = TreeExplainer(self.kind, self.estimator, nthread=self.nthread)
            self._explainer = explainer
        return self._explainer

    @property
    def estimator_loaded(self) -> bool:
        return self.__dict__.get("_estimator") is not None

    def explain(self, X: np.ndarray) -> Explained:
        """Calibrated risk with its SHAP explanation, for a matrix in MATRIX_NAMES order."""
        contribs, bias = self.explainer.contributions(X)
        base, grouped = calibrated_explanation(
            contribs @ GROUP, bias, self.calibration_intercept, self.calibration_slope
        )
        raw = bias + contribs.sum(axis=1)
        log_odds = base + grouped.sum(axis=1)
        return Explained(log_odds, risk_of(log_odds), base, grouped, raw)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated risk without the explanation (bulk evaluation), from the library's own margin."""
        self.estimator  # loads (and attaches to the explainer) a lazily loaded estimator
        margin = self.explainer.margin(X)
        return risk_of(calibrated_log_odds(margin, self.calibration_intercept, self.calibration_slope))

    def uncertainty(self, X: np.ndarray, log_odds: np.ndarray, parallel: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(low, high, P(another risk group)) per row from the bootstrap models, or None without them."""
        if self.instability is None:
            return None
        return self.instability.summary(X, log_odds, _logit(self.low_threshold), _logit(self.high_threshold),
                                        parallel=parallel)

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
            estimator_file = XGBOOST_FILE
            if self._estimator_raw is not None and not self.estimator_loaded:
                (path / estimator_file).write_bytes(self._estimator_raw)  # as loaded, byte for byte
            else:
                self.estimator.save_model(str(path / estimator_file))
        else:
            import joblib

            estimator_file = "model.joblib"
            joblib.dump(self.estimator, path / estimator_file)
        meta = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("estimator", "nthread", "documents", "instability") and not f.name.startswith("_")
        }
        meta["estimator_file"] = estimator_file
        if self.instability is not None:
            self.instability.save(path / ENSEMBLE_FILE)
        # the parts this bundle is made of, declared with their digests: a part missing or changed
        # is refused at load, never served as if it had never been there
        meta["parts"] = {name: sha256_file(path / name) for name in (estimator_file, ENSEMBLE_FILE)
                         if (path / name).exists()}
        (path / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        return path

    @classmethod
    def load(cls, path: Path, nthread: int = 1) -> "ModelBundle":
        """Load a saved bundle; BundleError (naming the file) for a part that is missing, differs
        from the digest bundle.json declares, or cannot be read."""
        path = Path(path)
        try:
            meta = json.loads((path / BUNDLE_FILE).read_text())
            estimator_file = meta.pop("estimator_file")
        except FileNotFoundError:
            raise BundleError(BUNDLE_FILE, "missing") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(BUNDLE_FILE, f"unreadable ({type(exc).__name__})") from None
        parts = meta.pop("parts", None)
        _check_parts(path, estimator_file, parts, meta)
        if tuple(meta["matrix_names"]) != MATRIX_NAMES:
            raise ValueError(
                "model bundle was trained on another feature encoding than this code "
                f"(contract v{meta.get('contract_version')}); retrain it"
            )
        estimator: Any = None
        lazy: dict[str, Any] = {}
        try:
            if meta["kind"] == "xgboost" and estimator_file.endswith(".json"):
                # the trees straight from xgboost's JSON document: no xgboost import until needed
                import orjson

                from models.trees import from_xgboost_json

                raw = (path / estimator_file).read_bytes()
                lazy = {"_trees": from_xgboost_json(orjson.loads(raw)), "_estimator_raw": raw}
            elif meta["kind"] == "xgboost":
                estimator = _load_booster(path / estimator_file, nthread)
            else:
                import joblib

                estimator = joblib.load(path / estimator_file)
        except Exception as exc:
            raise BundleError(estimator_file, f"unreadable ({type(exc).__name__})") from None
        meta["training_ranges"] = {k: tuple(v) for k, v in meta["training_ranges"].items()}
        meta["matrix_names"] = tuple(meta["matrix_names"])
        meta["feature_names"] = tuple(meta["feature_names"])
        documents = {p.name: p.read_text(encoding="utf-8") for p in path.glob("model_card.*")}
        instability = None
        if (path / ENSEMBLE_FILE).exists():
            try:
                form = LinearEnsemble if is_linear_ensemble(path / ENSEMBLE_FILE) else MarginEnsemble
                instability = form.load(path / ENSEMBLE_FILE)
            except Exception as exc:
                raise BundleError(ENSEMBLE_FILE, f"unreadable ({type(exc).__name__})") from None
        return cls(estimator=estimator, nthread=nthread, documents=documents, instability=instability, **meta,
                   **lazy)


def _check_parts(path: Path, estimator_file: str, parts: Any, meta: dict[str, Any]) -> None:
    """Every part bundle.json declares is there with its digest. Bundles saved before parts were
    declared: the estimator, and the bootstrap ensemble when the metadata describes one."""
    if parts is None:
        declared = {estimator_file: None}
        if meta.get("metadata", {}).get("instability"):
            declared[ENSEMBLE_FILE] = None
    elif isinstance(parts, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in parts.items()):
        declared = dict(parts)
    else:
        raise BundleError(BUNDLE_FILE, "unreadable (parts)")
    for name, digest in declared.items():
        part = path / name
        if Path(name).name != name or not part.is_file():
            raise BundleError(name, "missing (declared by bundle.json)")
        if digest is not None and sha256_file(part) != digest:
            raise BundleError(name, "sha256 differs from the digest bundle.json declares")
    if parts is not None and ENSEMBLE_FILE not in declared and (path / ENSEMBLE_FILE).exists():
        raise BundleError(ENSEMBLE_FILE, "not declared by bundle.json")


def _get_estimator(self: ModelBundle) -> Any:
    estimator = self.__dict__.get("_estimator")
    if estimator is None and self._estimator_raw is not None:
        with _LOAD_LOCK:
            estimator = self.__dict__.get("_estimator")
            if estimator is None:
                estimator = _load_booster(bytearray(self._estimator_raw), self.nthread)
                if self._explainer is not None:
                    self._explainer.attach(estimator)
                self.__dict__["_estimator"] = estimator
    return estimator


def _set_estimator(self: ModelBundle, estimator: Any) -> None:
    self.__dict__["_estimator"] = estimator
    explainer = self.__dict__.get("_explainer")
    if estimator is not None and explainer is not None:
        explainer.attach(estimator)


# `estimator` stays a constructor argument and an attribute, but reading it loads a lazily loaded
# booster (the dataclass __init__ assigns through the setter)
ModelBundle.estimator = property(_get_estimator, _set_estimator)


def _load_booster(source: Path | bytearray, nthread: int) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(source) if isinstance(source, Path) else source)
    booster.set_param({"nthread": nthread})
    return booster


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
