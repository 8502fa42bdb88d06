"""Each fact stated once: the outcome's names, the severe-grade rule and the series keys have one
definition that every user reads, so that a change in one place changes every place."""

from __future__ import annotations

import pandas as pd

from core import contract, style
from pipeline.train import validation
from core.contract import OUTCOMES, SEVERE_GRADE, intended_use, outcome_of


def test_each_outcome_carries_its_label_short_name_and_code() -> None:
    for name, outcome in OUTCOMES.items():
        assert outcome.label and outcome.short.startswith(outcome.label) and outcome.code
        assert f">={SEVERE_GRADE}" in outcome.short and f">= {SEVERE_GRADE}" in outcome.description
        assert outcome.code == name.replace("_", "-")
    assert OUTCOMES["severe_crs"].label == "severe CRS" and OUTCOMES["severe_icans"].label == "severe ICANS"
    assert len({o.code for o in OUTCOMES.values()}) == len(OUTCOMES)


def test_the_notice_names_the_model_s_own_outcome() -> None:
    crs = intended_use("severe_crs")
    assert "severe CRS" in crs and "ICANS" not in crs
    assert "severe ICANS" in intended_use("severe_icans") and "CRS" not in intended_use("severe_icans")
    assert contract.INTENDED_USE == intended_use("severe_icans")
    # a bundle from before outcomes were recorded predicts the default outcome
    assert outcome_of(None) is OUTCOMES[contract.DEFAULT_OUTCOME] and outcome_of("unknown").label == "severe ICANS"


def test_the_fhir_outcome_concept_and_notes_follow_the_contract() -> None:
    from serving.fhir import resources

    concept = resources.outcome_concept("severe_crs")
    assert concept["coding"][0]["code"] == OUTCOMES["severe_crs"].code
    assert resources.OUTCOME_SHORT == {n: o.short for n, o in OUTCOMES.items()}
    device = resources._device({"name": "crs-risk", "version": "1"}, "severe_crs")
    assert device["note"][0]["text"] == intended_use("severe_crs")


def test_the_schema_applies_the_severe_grade_rule_from_the_contract(monkeypatch) -> None:
    from pipeline.data import schema

    df = pd.DataFrame({contract.GRADE_COLUMN: [SEVERE_GRADE - 1, SEVERE_GRADE, SEVERE_GRADE + 1],
                       "severe_icans": [0, 1, 1]})
    assert bool(schema._grade_agrees(df).all())
    monkeypatch.setattr(schema, "SEVERE_GRADE", SEVERE_GRADE + 1)  # the rule is read, not re-typed
    assert not bool(schema._grade_agrees(df).all())


def test_served_outcomes_use_the_contract_s_severe_grade() -> None:
    from serving import outcomes

    assert outcomes.SEVERE_GRADE is SEVERE_GRADE


def test_series_keys_are_defined_once_in_style() -> None:
    assert validation.MODEL is style.MODEL and validation.UNTUNED_HGB is style.UNTUNED_HGB
    assert validation.LOGISTIC_MODEL is style.LOGISTIC_MODEL
    assert not hasattr(validation, "LOGISTIC")  # "LOGISTIC" is logistic recalibration's (pipeline.stats.recalibration)
