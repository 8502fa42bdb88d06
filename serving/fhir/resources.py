"""The service's answer as FHIR: a RiskAssessment (the CDS Hooks card is in `serving.fhir.card`).

Both are built from the predictor's answer (the same dictionary `POST /v1/risk` returns), never
recomputed. Optional elements without a value are omitted, never null or empty.

RiskAssessment (FHIR R4; validated against the R4B models of `fhir.resources` in the tests):
- `status` final; `code` and `method` name the model; `occurrenceDateTime` is when it was computed;
- `prediction[0].outcome`: the predicted outcome (severe ICANS, ASTCT grade >= 3);
  `probabilityDecimal`: the probability on the **0-1 scale** (not a percentage);
  `qualitativeRisk`: the risk group (low / moderate / high of the HL7 risk-probability code system,
  with the model's own group name as text); `rationale`: the exact SHAP explanation as text;
- `basis`: the inputs used (contained Observations, one per feature, with LOINC and UCUM where the
  contract has them);
- `prediction[0].extension` (INTERVAL_EXTENSION): the 95% model-development interval of the
  probability and the probability of another risk group. Not `probabilityRange`: `probability[x]`
  is a choice type, so a range would replace `probabilityDecimal`, which every consumer reads; an
  extension (not a modifier) leaves the point estimate where it is and can be ignored safely;
- `performer`: a contained Device carrying the model name and version (and MLflow run id);
- `note`: the intended-use notice and the answer's warnings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from core.contract import FEATURES_BY_NAME, OUTCOMES, intended_use
from serving.accept import media_ranges
from serving.fhir import codes as C
from serving.fhir.datatypes import FHIR_ID

FHIR_JSON = "application/fhir+json"
REQUEST_ID_SYSTEM = "urn:icans-risk:request-id"
INTERVAL_EXTENSION = "urn:icans-risk:fhir:extension:model-development-interval"
INTERVAL_WORDS = (
    "95% model-development interval: the range of the probability that the chosen configuration (not re-tuned), "
    "refitted on bootstrap samples of the development cohort, gives; not a range for the patient's outcome"
)
RUN_ID_SYSTEM = "urn:icans-risk:mlflow-run-id"
OVERRIDE_SYSTEM = "urn:icans-risk:override-reasons"
CARD_EXTENSION = "icans-risk.prediction"
TOP_FACTORS = 5

# The HL7 risk-probability code for each risk group of the model.
QUALITATIVE = {
    "low": ("low", "Low likelihood"),
    "intermediate": ("moderate", "Moderate likelihood"),
    "high": ("high", "High likelihood"),
}
INDICATOR = {"low": "info", "intermediate": "warning", "high": "critical"}
# the outcome's names live on contract.Outcome (label, short, code); kept here for serving.fhir.card
OUTCOME_SHORT = {name: o.short for name, o in OUTCOMES.items()}


def outcome_concept(outcome: str) -> dict[str, Any]:
    description = OUTCOMES[outcome].description
    return {
        "coding": [{"system": C.LOCAL, "code": OUTCOMES[outcome].code, "display": description}],
        "text": description,
    }


def feature_label(name: str) -> str:
    """The contract description without its parenthetical detail: 'Bone-marrow blasts'."""
    return re.sub(r"\s*\(.*\)\s*$", "", FEATURES_BY_NAME[name].description) if name in FEATURES_BY_NAME else name


def format_value(name: str, value: Any) -> str:
    if value is None:
        return "not provided"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        unit = FEATURES_BY_NAME[name].unit if name in FEATURES_BY_NAME else "-"
        return f"{value:.4g}" + ("" if unit == "-" else f" {unit}")
    return str(value)


def percent(risk: float) -> str:
    if risk < 0.001:
        return "<0.1%"
    if risk > 0.995:
        return ">99%"
    if risk < 0.1:
        return f"{risk * 100:.1f}%"
    return f"{risk * 100:.0f}%"


def rationale(answer: dict[str, Any]) -> str:
    ex = answer["explanation"]
    parts = [
        f"{feature_label(c['feature'])} = {format_value(c['feature'], c['value'])}: {c['log_odds']:+.4f}"
        for c in ex["contributions"]
    ]
    return (
        "Exact SHAP explanation on the log-odds scale (base + contributions = "
        f"{answer['log_odds']:.4f}, probability {answer['risk']:.4f}). Base {ex['base_log_odds']:+.4f}; "
        + "; ".join(parts)
        + "."
    )


# --------------------------------------------------------------------------------------------------
# RiskAssessment


def _device(model: dict[str, Any], outcome: str) -> dict[str, Any]:
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": "model",
        "deviceName": [{"name": str(model["name"]), "type": "model-name"}],
        "version": [{"value": str(model["version"])}],
        "type": {"text": "Machine-learning risk model (research use only)"},
        "note": [{"text": intended_use(outcome)}],
    }
    if model.get("run_id"):
        device["identifier"] = [{"system": RUN_ID_SYSTEM, "value": str(model["run_id"])}]
    return device


def _obs_id(name: str) -> str:
    return "in-" + name.replace("_", "-")


def input_observation(name: str, value: Any) -> dict[str, Any]:
    """One contract input as a contained Observation (LOINC + local code; UCUM quantity)."""
    f = FEATURES_BY_NAME[name]
    coding = []
    if f.loinc:
        coding.append({"system": C.LOINC, "code": f.loinc})
    if name == "il15_pg_ml":
        coding.append({"system": C.IL15_LOCAL[0], "code": C.IL15_LOCAL[1]})
    coding.append({"system": C.LOCAL, "code": name, "display": f.description})
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _obs_id(name),
        "status": "final",
        "code": {"coding": coding, "text": f.description},
    }
    if f.kind == "float":
        obs["valueQuantity"] = {
            "value": float(value),
            "unit": f.unit,
            "system": C.UCUM,
            "code": C.CONTRACT_UCUM[f.unit],
        }
    elif f.kind == "bool":
        obs["valueBoolean"] = bool(value)
    else:
        obs["valueCodeableConcept"] = {"coding": [{"system": C.LOCAL, "code": str(value)}], "text": str(value)}
    return obs


def risk_assessment(
    answer: dict[str, Any],
    record: dict[str, Any],
    *,
    outcome: str,
    request_id: str | None = None,
    subject: dict[str, Any] | None = None,
    occurrence: datetime | None = None,
    basis: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment of one answer. `basis` defaults to contained input Observations."""
    contained: list[dict[str, Any]] = [_device(answer["model"], outcome)]
    if basis is None:
        basis = []
        for name, value in record.items():
            if name not in FEATURES_BY_NAME or value is None:
                continue
            obs = input_observation(name, value)
            contained.append(obs)
            basis.append({"reference": f"#{obs['id']}", "display": f"{feature_label(name)}: {format_value(name, value)}"})
    group = answer["risk_group"]
    code, display = QUALITATIVE[group]
    notes = [
        {"text": intended_use(outcome)},
        {"text": "prediction.probabilityDecimal is a probability on the 0-1 scale (not a percentage)."},
    ] + [{"text": w} for w in answer.get("warnings", [])]
    model = answer["model"]
    ra: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "contained": contained,
        "status": "final",
        "method": {"text": f"{model['name']} v{model['version']}: calibrated risk model with exact SHAP explanation (family and validation: GET /v1/model)"},
        "code": {"coding": [{"system": C.LOCAL, "code": str(model["name"])}], "text": f"Risk of {OUTCOMES[outcome].description}"},
        "subject": subject or {"display": "patient not identified in the request"},
        "occurrenceDateTime": (occurrence or datetime.now(UTC)).isoformat(timespec="seconds"),
        "performer": {"reference": "#model", "display": f"{model['name']} v{model['version']}"},
        "prediction": [
            {
                "outcome": outcome_concept(outcome),
                "probabilityDecimal": float(answer["risk"]),
                "qualitativeRisk": {
                    "coding": [{"system": C.RISK_PROBABILITY, "code": code, "display": display}],
                    "text": group,
                },
                "rationale": rationale(answer),
            }
        ],
        "note": notes,
    }
    unc = answer.get("uncertainty")
    if unc:
        lo, hi = unc["interval"]
        ra["prediction"][0]["extension"] = [{
            "url": INTERVAL_EXTENSION,
            "extension": [
                {"url": "low", "valueDecimal": float(lo)},
                {"url": "high", "valueDecimal": float(hi)},
                {"url": "level", "valueDecimal": float(unc["level"])},
                {"url": "riskGroupChangeProbability", "valueDecimal": float(unc["risk_group_change_probability"])},
                {"url": "bootstrapModels", "valueInteger": int(unc["bootstrap_models"])},
            ],
        }]
        notes.insert(2, {"text": f"{INTERVAL_WORDS}: {float(lo):.4f}-{float(hi):.4f} (extension {INTERVAL_EXTENSION})."})
    if basis:
        ra["basis"] = basis
    if request_id:
        ra["identifier"] = [{"system": REQUEST_ID_SYSTEM, "value": request_id}]
        if FHIR_ID.match(request_id):
            ra["id"] = request_id
    return ra


def prune(obj: Any) -> Any:
    """Drop None, "", [] and {} recursively (CDS Hooks: optional fields without a value are omitted)."""
    if isinstance(obj, dict):
        out = {k: prune(v) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(obj, list):
        out_list = [prune(v) for v in obj]
        return [v for v in out_list if v not in (None, "", [], {})]
    return obj


def wants_fhir(accept: str | None) -> bool:
    """True if the Accept header prefers application/fhir+json (at least as much as application/json)."""
    if not accept:
        return False
    q = {"fhir": 0.0, "json": 0.0}
    for media, weight in media_ranges(accept):
        media = media.lower()
        if media == FHIR_JSON:
            q["fhir"] = max(q["fhir"], weight)
        elif media == "application/json":
            q["json"] = max(q["json"], weight)
    return q["fhir"] > 0 and q["fhir"] >= q["json"]


def openapi_fhir_response() -> dict[str, Any]:
    """The OpenAPI entry of the FHIR answer of POST /v1/risk (Accept: application/fhir+json)."""
    return {
        "description": (
            "With `Accept: application/fhir+json`: the same answer as a FHIR R4 RiskAssessment "
            "(`prediction[0].probabilityDecimal` is the probability on the 0-1 scale, "
            "`qualitativeRisk` the risk group, `rationale` the exact SHAP explanation, `basis` the "
            "inputs as contained Observations, `performer` a contained Device with the model name "
            "and version). The audit record is the same as for the JSON answer."
        ),
        "content": {
            FHIR_JSON: {
                "schema": {
                    "type": "object",
                    "description": "FHIR R4 RiskAssessment (http://hl7.org/fhir/R4/riskassessment.html)",
                    "required": ["resourceType", "status", "subject", "prediction"],
                    "properties": {"resourceType": {"type": "string", "enum": ["RiskAssessment"]}},
                }
            }
        },
    }
