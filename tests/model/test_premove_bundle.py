"""Bundles saved before the packages-as-layers move (issue 24) still load and answer identically.

tests/fixtures/premove_bundles/ was written by the pre-move code (`pipeline.cohort`, `pipeline.features`;
the generator is kept beside it as MAKE.py.txt): a hist_gradient_boosting bundle, whose estimator
joblib pickles by import path, and an xgboost bundle (JSON trees), each with the risks, log-odds,
contributions and risk groups that code answered for 44 requests. Loading them with today's code must
give the same numbers, to the bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.features import N_MATRIX, encode_record
from models.artifact import ModelBundle

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "premove_bundles"
KINDS = ("hist_gradient_boosting", "xgboost")


def _answers(kind: str) -> dict:
    return json.loads((FIXTURES / f"{kind}.answers.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_a_bundle_saved_before_the_move_answers_identically(kind: str) -> None:
    expected = _answers(kind)
    X = np.empty((len(expected["records"]), N_MATRIX))
    for i, r in enumerate(expected["records"]):
        encode_record(r, X[i])
    bundle = ModelBundle.load(FIXTURES / kind)
    ex = bundle.explain(X)
    assert bundle.kind == kind
    assert ex.risk.tolist() == expected["risk"]
    assert ex.log_odds.tolist() == expected["log_odds"]
    assert ex.contributions.tolist() == expected["contributions"]
    assert bundle.risk_group(ex.risk).tolist() == expected["risk_group"]


def test_every_path_the_old_pickle_names_still_imports() -> None:
    """The joblib pickle names classes by module path: each must resolve, none in a moved package."""
    import joblib
    from joblib import numpy_pickle

    seen: list[str] = []
    original = numpy_pickle.NumpyUnpickler.find_class

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        seen.append(f"{module}.{name}")
        return original(self, module, name)

    numpy_pickle.NumpyUnpickler.find_class = find_class  # type: ignore[method-assign]
    try:
        joblib.load(FIXTURES / "hist_gradient_boosting" / "model.joblib")
    finally:
        numpy_pickle.NumpyUnpickler.find_class = original  # type: ignore[method-assign]
    ours = [s for s in seen if s.split(".")[0] in ("core", "models", "pipeline", "serving", "cli")]
    assert ours == ["models.hgb.HistGradientBoosting"], ours
