"""FHIR resources -> contract record (serving/fhir/mapping.py) and the FHIR/CDS resources built from
an answer, without the app. Every input bundle is built with the R4B models of fhir.resources, and
every resource the service produces is validated with them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from core.contract import FEATURE_NAMES, FEATURES, FEATURES_BY_NAME, example_request
from serving.fhir import codes as C
from serving.fhir.mapping import PrefetchError, map_prefetch, parse_cell_dose_unit, prefetch_templates
from serving.fhir.card import card
from core.display import percent
from serving.fhir.resources import prune, risk_assessment, wants_fhir
from serving.schemas import PatientFeatures
from tests.helpers import Chart, EXPECTED, NOW, mapped


# --------------------------------------------------------------------------------------------------
# Complete, optional and required data


def test_complete_chart_maps_to_the_contract_record_and_validates():
    m = mapped(Chart())
    assert m.complete, m.missing
    assert set(m.record) == set(FEATURE_NAMES)
    for name, value in EXPECTED.items():
        assert m.record[name] == value, name
    assert m.record["age_years"] == pytest.approx(34.2, abs=0.05)
    assert m.anchor == NOW - timedelta(days=2)  # lymphodepletion start precedes the order and now
    PatientFeatures.model_validate(m.record)
    assert m.sources["ldh_u_l"].reference.startswith("Observation/")
    assert "Hemopoietic stem cell transplant" in m.sources["prior_allo_hct"].text


def test_missing_optional_labs_are_none_not_missing():
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature not in ("ferritin_ng_ml", "il6_pg_ml")]
    chart.omit.add("il15")  # a key the client did not send at all
    m = mapped(chart)
    assert m.complete
    assert m.record["ferritin_ng_ml"] is None and m.record["il6_pg_ml"] is None and m.record["il15_pg_ml"] is None
    assert any("il15" in n for n in m.notes)


def test_missing_required_labs_are_listed_with_reasons():
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature not in ("ldh_u_l",)]
    chart.omit.add("crp")
    m = mapped(chart)
    missing = {x.feature: x.reason for x in m.missing}
    assert set(missing) == {"ldh_u_l", "crp_mg_l"}
    assert "2532-0" in missing["ldh_u_l"] and "no usable" in missing["ldh_u_l"]
    assert "'crp'" in missing["crp_mg_l"] and "not provided" in missing["crp_mg_l"]


def test_missing_patient_medications_and_conditions_keys():
    chart = Chart()
    chart.omit |= {"patient", "medications", "conditions", "procedures"}
    missing = {x.feature for x in mapped(chart).missing}
    assert missing == {
        "age_years", "sex", "prior_neuro_comorbidity", "cns_involvement", "prior_allo_hct", "product",
        "costimulatory_domain", "target_antigen", "car_t_dose_10e6_per_kg", "lymphodepletion",
    }


def test_null_lists_mean_false_but_absent_lists_mean_missing():
    chart = Chart()
    chart.procedures = []
    m = mapped(chart)
    assert m.complete and m.record["prior_allo_hct"] is False
    assert m.record["prior_neuro_comorbidity"] is False and m.record["cns_involvement"] is False


# --------------------------------------------------------------------------------------------------
# Units and the baseline window


@pytest.mark.parametrize(
    "feature,value,unit,expected",
    [
        ("crp_mg_l", 0.8, "mg/dL", 8.0),
        ("crp_mg_l", 8.0, "ug/mL", 8.0),
        ("creatinine_mg_dl", 61.894, "umol/L", 61.894 / 88.42),
        ("creatinine_mg_dl", 7.0, "mg/L", 0.7),
        ("platelets_10e9_l", 85.0, "10*3/uL", 85.0),
        ("platelets_10e9_l", 85000.0, "/uL", 85.0),
        ("ldh_u_l", 4.0, "ukat/L", 240.0),
        ("ldh_u_l", 240.0, "[IU]/L", 240.0),
        ("ferritin_ng_ml", 650.0, "ug/L", 650.0),
        ("ferritin_ng_ml", 1460.55, "pmol/L", 1460.55 / 2.247),
        ("il6_pg_ml", 6.0, "ng/L", 6.0),
    ],
)
def test_ucum_units_are_converted_to_contract_units(feature, value, unit, expected):
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature != feature]
    chart.lab(feature, value, unit)
    m = mapped(chart)
    assert m.record[feature] == pytest.approx(expected, rel=1e-9)
    assert unit in m.sources[feature].original


def test_free_text_units_without_ucum_code_and_unconvertible_units():
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature not in ("platelets_10e9_l", "crp_mg_l")]
    chart.lab("platelets_10e9_l", 85.0, "x10^9/L", ucum=False)
    chart.lab("crp_mg_l", 3.0, "mmol/L", days_ago=2.5)  # no molar mass for CRP: ignored
    chart.lab("crp_mg_l", 8.0, "mg/L", days_ago=4)
    m = mapped(chart)
    assert m.record["platelets_10e9_l"] == 85.0
    assert m.record["crp_mg_l"] == 8.0
    assert any("not convertible" in n for n in m.notes)


def test_stale_later_and_unfinished_values_are_ignored():
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature != "ldh_u_l"]
    chart.lab("ldh_u_l", 999.0, "U/L", days_ago=30)  # older than the 14-day window
    chart.lab("ldh_u_l", 240.0, "U/L", days_ago=5)  # the one to use
    chart.lab("ldh_u_l", 200.0, "U/L", days_ago=8)  # older than the one to use
    chart.lab("ldh_u_l", 888.0, "U/L", days_ago=1)  # after the anchor (lymphodepletion started 2 days ago)
    chart.lab("ldh_u_l", 777.0, "U/L", days_ago=3, status="preliminary")
    m = mapped(chart)
    assert m.record["ldh_u_l"] == 240.0
    note = next(n for n in m.notes if n.startswith("ldh_u_l"))
    assert "older than the baseline window" in note and "after the anchor" in note and "status preliminary" in note


def test_only_stale_values_means_missing_and_the_window_is_configurable():
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature != "ldh_u_l"]
    chart.lab("ldh_u_l", 240.0, "U/L", days_ago=20)
    assert [x.feature for x in mapped(chart).missing] == ["ldh_u_l"]
    assert mapped(chart, window_days=30).record["ldh_u_l"] == 240.0


def test_anchor_is_now_without_orders_dates_and_the_order_otherwise():
    chart = Chart()
    chart.requests = []
    chart.car_t("tisagenlecleucel", 1.0, days_ago=4)
    chart.lymphodepletion(days_ago=3)
    assert mapped(chart).anchor == NOW - timedelta(days=4)


def test_subject_of_another_patient_is_never_used():
    chart = Chart()
    chart.observations = [o for o in chart.observations if o._feature != "ldh_u_l"]
    other = chart.lab("ldh_u_l", 5000.0, "U/L", days_ago=2.5)
    other.subject.reference = "Patient/someone-else"
    chart.lab("ldh_u_l", 240.0, "U/L", days_ago=6)
    m = mapped(chart)
    assert m.record["ldh_u_l"] == 240.0
    assert any("another patient" in n for n in m.notes)


# --------------------------------------------------------------------------------------------------
# Product, dose, lymphodepletion


@pytest.mark.parametrize(
    "name,product,costim",
    [
        ("Tecartus", "brexucabtagene_autoleucel", "CD28"),
        ("brexucabtagene autoleucel suspension for IV infusion", "brexucabtagene_autoleucel", "CD28"),
        ("AUCATZYL (obecabtagene autoleucel)", "obecabtagene_autoleucel", "4-1BB"),
        ("Yescarta", "other", "CD28"),
    ],
)
def test_product_table(name, product, costim):
    chart = Chart()
    chart.requests = [r for r in chart.requests if not r.id.startswith("mr")]
    chart.car_t(name, 1.0, via_medication=name == "Tecartus")
    m = mapped(chart)
    assert (m.record["product"], m.record["costimulatory_domain"], m.record["target_antigen"]) == (product, costim, "CD19")


def test_unknown_product_cancelled_order_and_missing_dose():
    chart = Chart()
    chart.requests = [r for r in chart.requests if not r.id.startswith("mr")]
    chart.car_t("investigational CAR product", 1.0)
    chart.car_t("Kymriah", 1.0, status="cancelled")
    assert {x.feature for x in mapped(chart).missing} == {"product", "costimulatory_domain", "target_antigen", "car_t_dose_10e6_per_kg"}
    chart.car_t("Kymriah", None)
    m = mapped(chart)
    assert [x.feature for x in m.missing] == ["car_t_dose_10e6_per_kg"]


def test_total_dose_is_divided_by_body_weight():
    chart = Chart()
    chart.requests = [r for r in chart.requests if not r.id.startswith("mr")]
    chart.car_t("Kymriah", 1.2, unit="10*8{cells}")
    assert [x.feature for x in mapped(chart).missing] == ["car_t_dose_10e6_per_kg"]
    chart.weight(80.0)
    assert mapped(chart).record["car_t_dose_10e6_per_kg"] == pytest.approx(120.0 / 80.0)


@pytest.mark.parametrize(
    "unit,expected",
    [("10*6/kg", (True, 6)), ("10*6{cells}/kg", (True, 6)), ("x10^6 CAR-T cells/kg", (True, 6)), ("10*8", (False, 8)),
     ("{cells}", (False, 0)), ("mg", (False, None)), ("", (False, None)), ("10*6/L", (False, None))],
)
def test_cell_dose_units(unit, expected):
    assert parse_cell_dose_unit(unit) == expected


def test_lymphodepletion_regimen_and_window():
    chart = Chart()
    chart.requests = [r for r in chart.requests if r.id.startswith("mr")]
    chart.lymphodepletion(("fludarabine", "bendamustine"))
    assert mapped(chart).record["lymphodepletion"] == "other"
    chart.requests = [r for r in chart.requests if r.id.startswith("mr")]
    chart.lymphodepletion(days_ago=200)  # earlier chemotherapy, not this lymphodepletion
    assert [x.feature for x in mapped(chart).missing] == ["lymphodepletion"]


# --------------------------------------------------------------------------------------------------
# Conditions and procedures


@pytest.mark.parametrize(
    "flag,system,code,display,text",
    [
        ("prior_neuro_comorbidity", C.SNOMED, "84757009", "Epilepsy", None),
        ("prior_neuro_comorbidity", "http://hl7.org/fhir/sid/icd-10-cm", "G62.0", "Drug-induced polyneuropathy", None),
        ("prior_neuro_comorbidity", "http://hl7.org/fhir/sid/icd-10-cm", "G92.01", None, None),
        ("cns_involvement", "http://hospital.example/problems", "X1", None, "CNS3 leukaemia"),
        ("cns_involvement", "http://hl7.org/fhir/sid/icd-10-cm", "C79.32", None, None),
        ("prior_allo_hct", "http://hl7.org/fhir/sid/icd-10-cm", "Z94.84", "Stem cells transplant status", None),
    ],
)
def test_condition_tables(flag, system, code, display, text):
    chart = Chart()
    chart.procedures = []
    chart.condition(system, code, display, text=text)
    m = mapped(chart)
    assert m.record[flag] is True
    others = {"prior_neuro_comorbidity", "cns_involvement", "prior_allo_hct"} - {flag}
    assert not any(m.record[o] for o in others)


def test_refuted_resolved_negated_later_and_autologous_do_not_count():
    chart = Chart()
    chart.procedures = []
    chart.condition(C.SNOMED, "84757009", "Epilepsy", verification="refuted")
    chart.condition(C.SNOMED, "94225005", "Secondary malignant neoplasm of brain", clinical="resolved")
    chart.condition("http://hospital.example/problems", "X2", text="No CNS involvement (CNS1)")
    chart.condition("http://hl7.org/fhir/sid/icd-10-cm", "G92.03", days_ago=-1)  # ICANS after the anchor
    chart.procedure(C.SNOMED, "234336002", text="Autologous stem cell transplant")
    chart.procedure(C.SNOMED, "234336002", "Hemopoietic stem cell transplant", status="not-done")
    m = mapped(chart)
    assert m.complete
    assert not m.record["prior_neuro_comorbidity"] and not m.record["cns_involvement"] and not m.record["prior_allo_hct"]


def test_site_codes_extend_the_tables():
    chart = Chart()
    chart.procedures = []
    chart.condition("http://hospital.example/problems", "NEURO-7", text="Local neuro code")
    chart.observations = [o for o in chart.observations]
    chart.lab("il15_pg_ml", 30.0, "pg/mL", code=("http://hospital.example/lab", "IL15X"))
    m = mapped(chart)
    assert m.record["prior_neuro_comorbidity"] is False and m.record["il15_pg_ml"] is None
    extra = {"prior_neuro_comorbidity": ["http://hospital.example/problems|NEURO-7"], "il15_pg_ml": ["http://hospital.example/lab|IL15X"]}
    m = mapped(chart, extra_codes=extra)
    assert m.record["prior_neuro_comorbidity"] is True and m.record["il15_pg_ml"] == 30.0
    assert "http://hospital.example/lab|IL15X" in prefetch_templates(extra)["il15"]


def test_invalid_fhir_is_refused_without_echoing_values():
    data = Chart().prefetch()
    data["ldh"]["entry"][0]["resource"]["valueQuantity"]["value"] = "SECRET-VALUE"
    with pytest.raises(PrefetchError, match="prefetch 'ldh': invalid Bundle") as exc:
        map_prefetch("pat-001", data, now=NOW)
    assert "SECRET" not in str(exc.value)
    with pytest.raises(PrefetchError, match="not a FHIR id"):
        map_prefetch("bad id!", data, now=NOW)


# --------------------------------------------------------------------------------------------------
# Tables and templates


def test_prefetch_templates_carry_the_contract_loinc_codes_and_the_il15_local_code():
    templates = prefetch_templates()
    for f in FEATURES:
        if f.loinc:
            assert f"http://loinc.org|{f.loinc}" in templates[C.LAB_KEYS[f.name]]
    assert "urn:icans-risk:codes|IL15" in templates["il15"]
    assert templates["patient"] == "Patient/{{context.patientId}}"
    assert templates["medications"].startswith("MedicationRequest?patient={{context.patientId}}")
    assert all("{{context.patientId}}" in t for t in templates.values())


def test_every_float_feature_has_a_ucum_unit_and_converts_from_itself():
    for f in FEATURES:
        if f.kind == "float" and f.name in C.LAB_FEATURES:
            assert C.conversion_factor(f.name, C.CONTRACT_UCUM[f.unit]) == 1.0, f.name


# --------------------------------------------------------------------------------------------------
# Resources built from an answer


def fake_answer(risk: float = 0.27, group: str = "high") -> dict[str, Any]:
    record = example_request()
    contributions = [
        {"feature": name, "value": record.get(name), "unit": FEATURES_BY_NAME[name].unit, "log_odds": 0.1 * (i % 3 - 1)}
        for i, name in enumerate(FEATURE_NAMES)
    ]
    return {
        "risk": risk,
        "risk_group": group,
        "log_odds": -1.0,
        "explanation": {"base_log_odds": -1.0, "contributions": contributions},
        "model": {"name": "icans-risk", "version": "3", "run_id": "abc123"},
        "warnings": ["not provided, handled as missing by the model: ifng_pg_ml, il15_pg_ml"],
    }


def test_risk_assessment_is_valid_r4b_with_everything_the_issue_asks_for():
    record = {**example_request(), "ifng_pg_ml": None, "il15_pg_ml": None}
    ra = risk_assessment(fake_answer(), record, outcome="severe_icans", request_id="req-1",
                         subject={"identifier": {"value": "pseudonym-1"}})
    model = RiskAssessment.model_validate(ra)
    assert model.status == "final"
    pred = model.prediction[0]
    assert float(pred.probabilityDecimal) == 0.27
    assert pred.qualitativeRisk.coding[0].code == "high"
    assert "grade >= 3" in pred.outcome.text
    assert "SHAP" in pred.rationale
    kinds = [c.get_resource_type() for c in model.contained]
    assert kinds[0] == "Device" and kinds.count("Observation") == sum(v is not None for v in record.values())
    device = model.contained[0]
    assert device.deviceName[0].name == "icans-risk" and device.version[0].value == "3"
    assert model.performer.reference == "#model"
    ids = {f"#{c.id}" for c in model.contained}
    assert {b.reference for b in model.basis} <= ids  # every basis entry is a contained input
    ldh = next(c for c in model.contained if c.id == "in-ldh-u-l")
    assert ldh.code.coding[0].code == "2532-0" and ldh.valueQuantity.code == "U/L"


@pytest.mark.parametrize("group,indicator", [("low", "info"), ("intermediate", "warning"), ("high", "critical")])
def test_card_fields(group, indicator):
    c = prune(card(fake_answer(0.05, group), outcome="severe_icans", card_uuid="0b7e3f0a-6c1d-4c1b-9b7e-2f1a4c5d6e7f",
                   source_url="https://cds.test/v1/model/card", thresholds=(0.05, 0.2)))
    assert c["indicator"] == indicator and len(c["summary"]) < 140
    assert "5.0%" in c["summary"] and group.capitalize() in c["summary"]
    assert c["source"] == {"label": "icans-risk v3 (research use only)", "url": "https://cds.test/v1/model/card"}
    assert "version 3" in c["detail"] and "| factor | value | effect |" in c["detail"]
    assert all(r["display"] for r in c["overrideReasons"])


def test_percent_and_prune_and_accept_header():
    assert [percent(x) for x in (0.0001, 0.054, 0.27, 0.999)] == ["<0.1%", "5.4%", "27%", ">99%"]
    assert prune({"a": None, "b": "", "c": [], "d": {}, "e": [{"f": None}], "g": False, "h": 0}) == {"g": False, "h": 0}
    assert wants_fhir("application/fhir+json")
    assert wants_fhir("application/fhir+json; fhirVersion=4.0, application/json;q=0.5")
    assert not wants_fhir("application/json")
    assert not wants_fhir("application/json, application/fhir+json;q=0.4")
    assert not wants_fhir(None) and not wants_fhir("*/*")


def test_malformed_site_codes_are_refused_at_start_up():
    from core.settings import Settings
    from serving.routes.cds_hooks import build_router

    with pytest.raises(ValueError, match="system\\|code"):
        build_router(Settings(cds_extra_codes={"il15_pg_ml": ["IL15-without-system"]}))
    with pytest.raises(ValueError, match="unknown key"):
        build_router(Settings(cds_extra_codes={"il16_pg_ml": ["http://x|y"]}))
    assert build_router(Settings(cds_extra_codes={"cns_involvement": ["http://x|CNS"]})).routes
