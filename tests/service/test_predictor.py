"""The hot path's answer building, against plain row-by-row reference rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.contract import FEATURES, FEATURES_BY_NAME
from tests.helpers import edge_records, random_records


def reference_warnings(rec: dict, ranges: dict) -> list[str]:
    """The rule as the API documents it, one record at a time."""
    out = []
    missing = [f.name for f in FEATURES if not f.required and rec.get(f.name) is None]
    if missing:
        out.append("not provided, handled as missing by the model: " + ", ".join(missing))
    for f in FEATURES:
        value, bounds = rec.get(f.name), ranges.get(f.name)
        if f.kind != "float" or value is None or bounds is None or math.isnan(value):
            continue
        lo, hi = bounds
        if value < lo or value > hi:
            out.append(
                f"{f.name} is outside the range seen in training (1st-99th percentile "
                f"{lo:.4g}-{hi:.4g} {f.unit}); the estimate is less certain"
            )
    return out


@pytest.fixture(scope="module")
def predictor(bundle):
    from models.registry import ResolvedModel
    from serving.predictor import Predictor

    return Predictor(bundle, ResolvedModel(name="icans-risk", version="1", run_id="r", source="test"))


def test_batch_answers_equal_one_by_one_answers_and_the_reference_rules(predictor):
    records = random_records(300, seed=7, missing_rate=0.4) + edge_records()
    together = predictor.predict(records)
    for rec, answer in zip(records, together):
        (alone,) = predictor.predict([rec])  # same answer (to float rounding) as in a batch
        rounded = ("risk", "log_odds", "explanation", "uncertainty")
        assert {k: v for k, v in answer.items() if k not in rounded} == {
            k: v for k, v in alone.items() if k not in rounded
        }
        assert answer["risk"] == pytest.approx(alone["risk"], abs=1e-12)
        # a batch's intervals come from the block kernel, one patient's from the row kernel: the same
        # 200 margins summed in another order
        assert answer["uncertainty"]["interval"] == pytest.approx(alone["uncertainty"]["interval"], abs=1e-9)
        assert {k: v for k, v in answer["uncertainty"].items() if k != "interval"} == {
            k: v for k, v in alone["uncertainty"].items() if k != "interval"}
        by_feature = {c["feature"]: c for c in alone["explanation"]["contributions"]}
        for c in answer["explanation"]["contributions"]:
            other = by_feature[c["feature"]]
            assert (c["value"], c["unit"]) == (other["value"], other["unit"])
            assert c["log_odds"] == pytest.approx(other["log_odds"], abs=1e-12)
        assert answer["warnings"] == reference_warnings(rec, predictor.ranges)
        contribs = answer["explanation"]["contributions"]
        effects = [abs(c["log_odds"]) for c in contribs]
        assert effects == sorted(effects, reverse=True)
        assert [c["value"] for c in contribs] == [rec.get(c["feature"]) for c in contribs]
        assert all(c["unit"] == FEATURES_BY_NAME[c["feature"]].unit for c in contribs)
        total = answer["explanation"]["base_log_odds"] + sum(c["log_odds"] for c in contribs)
        assert total == pytest.approx(answer["log_odds"], abs=1e-9)
        assert type(answer["risk"]) is float and type(contribs[0]["log_odds"]) is float  # JSON-ready
    assert sum(bool(a["warnings"]) for a in together) > 100  # the cases were exercised
    flagged = [a for a in together if any("outside the range" in w for w in a["warnings"])]
    assert flagged, "edge records must fall outside the training range"


def test_warnings_never_echo_values(predictor):
    rec = {**random_records(1, seed=3, missing_rate=0.0)[0], "ldh_u_l": 19999.5}
    (answer,) = predictor.predict([rec])
    assert any("ldh_u_l" in w for w in answer["warnings"])
    assert "19999.5" not in " ".join(answer["warnings"])
    assert np.isfinite(answer["risk"])
