"""CDS Hooks prefetch: the keys and FHIR queries the service announces, and reading their values.

A prefetch value is a FHIR resource or a searchset Bundle, validated against the R4B models;
an OperationOutcome in its place means the client could not prefetch that key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from serving.fhir import codes as C

# Prefetch keys besides the laboratory ones.
PATIENT_KEY = "patient"
CONDITIONS_KEY = "conditions"
PROCEDURES_KEY = "procedures"
MEDICATIONS_KEY = "medications"
WEIGHT_KEY = "body-weight"


class PrefetchError(ValueError):
    """A prefetched value is not valid FHIR (answered 400; the message never echoes values)."""


def resources_of(key: str, value: Any) -> list[Any]:
    """The FHIR resources of one prefetch value (a resource or a searchset Bundle), validated R4B."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    if value is None:
        return []
    if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
        raise PrefetchError(f"prefetch '{key}': not a FHIR resource (no resourceType)")
    try:
        cls = get_fhir_model_class(value["resourceType"])
    except ValueError:
        raise PrefetchError(f"prefetch '{key}': unknown resourceType") from None
    try:
        resource: Any = cls.model_validate(dict(value))  # the class is the resourceType's: known at run time
    except ValidationError as exc:
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise PrefetchError(f"prefetch '{key}': invalid {value['resourceType']} ({where})") from None
    if resource.get_resource_type() == "Bundle":
        return [e.resource for e in (resource.entry or []) if e.resource is not None]
    return [resource]


def is_unsatisfied(value: Any) -> bool:
    """An OperationOutcome in place of data: the client could not prefetch this key."""
    return isinstance(value, Mapping) and value.get("resourceType") == "OperationOutcome"


def prefetch_templates(extra_codes: Mapping[str, Iterable[str]] | None = None) -> dict[str, str]:
    """Key -> FHIR query; one Observation search per laboratory feature (see LAB_KEYS)."""
    extra_codes = extra_codes or {}
    pid = "{{context.patientId}}"
    out = {PATIENT_KEY: f"Patient/{pid}"}
    for feature in C.LAB_FEATURES:
        tokens = list(C.lab_codes(feature)) + [C.parse_token(t) for t in extra_codes.get(feature, ())]
        codes = ",".join(dict.fromkeys(f"{s}|{c}" for s, c in tokens))
        out[C.LAB_KEYS[feature]] = f"Observation?patient={pid}&code={codes}&_sort=-date"
    out[WEIGHT_KEY] = f"Observation?patient={pid}&code={C.BODY_WEIGHT[0]}|{C.BODY_WEIGHT[1]}&_sort=-date"
    out[CONDITIONS_KEY] = f"Condition?patient={pid}"
    out[PROCEDURES_KEY] = f"Procedure?patient={pid}"
    out[MEDICATIONS_KEY] = f"MedicationRequest?patient={pid}&_include=MedicationRequest:medication"
    return out
