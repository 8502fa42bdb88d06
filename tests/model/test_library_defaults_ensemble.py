"""The library-default configuration, the first of every search, can always carry the served intervals.

scikit-learn's HistGradientBoosting grows 31-leaf trees of any depth by default; a training whose
search chose its defaults failed at the bootstrap models ("trees of depth 11 (> 8) are too deep").
"""

from __future__ import annotations

import numpy as np
import pytest

from models.candidates import LIBRARY_DEFAULTS, TREE_FAMILIES
from models.ensemble import MAX_DEPTH
from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame
from pipeline.train.instability import bootstrap_ensemble


@pytest.mark.parametrize("kind", sorted(TREE_FAMILIES))
@pytest.mark.parametrize("seed", [1, 2])
def test_bootstrap_models_of_the_library_defaults_compile(kind, seed):
    df = generate_cohort(n=600, seed=seed)
    X, y = encode_frame(df), df["severe_icans"].to_numpy(int)
    ensemble, _ = bootstrap_ensemble(kind, LIBRARY_DEFAULTS[kind], X, y, n_models=3, cv_folds=2, seed=seed, n_jobs=1)
    assert ensemble.n_models == 3
    assert np.isfinite(ensemble.margins(X[:20])).all()


def test_no_default_asks_for_deeper_trees_than_the_ensemble_holds():
    for kind in TREE_FAMILIES:
        depth = LIBRARY_DEFAULTS[kind].get("max_depth")
        assert depth is not None and depth <= MAX_DEPTH, kind
