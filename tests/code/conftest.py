"""Fixtures the code tests share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from pipeline import evidence as ev


@pytest.fixture(scope="module")
def evidence():
    from pipeline.data.synthetic import generate_cohort

    dev, test = generate_cohort(600, 21), generate_cohort(400, 22)
    rng = np.random.default_rng(0)
    p_test = expit(logit(test["p_true"].to_numpy()) + rng.normal(0, 0.5, len(test)))
    p_dev = expit(logit(dev["p_true"].to_numpy()) + rng.normal(0, 0.5, len(dev)))
    learning = pd.DataFrame(
        [{"size": s, "events_train": s // 6, "model": m, "auroc": a, "seconds": 0.1}
         for s in (250, 500) for m, a in (("xgboost", 0.70), ("logistic", 0.72), ("m_easix", 0.67),
                                          (ev.ORACLE, 0.82))]
    )
    return ev.build_evidence(
        dev["severe_icans"].astype(int).to_numpy(), p_dev, dev,
        test["severe_icans"].astype(int).to_numpy(), p_test, test,
        {"low": 0.08, "high": 0.3}, 24, n_boot=200, curve_boot=50, learning_curve=learning,
        meta={"model": "icans-risk v7 <b>bold</b>", "run_id": "0123abcd"},
    )
