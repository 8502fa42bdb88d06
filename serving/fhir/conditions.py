"""The yes/no features from Conditions and Procedures: neurological comorbidity, CNS involvement,
prior allogeneic transplant (the tables are in `serving.fhir.codes`).

`ConditionRules` is a part of `serving.fhir.mapping.Mapper`, which holds the state it reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from serving.fhir import codes as C
from serving.fhir.datatypes import as_instant, concept_label, concept_texts, concept_tokens, reference_of, status_code
from serving.fhir.mapped import Source
from serving.fhir.prefetch import CONDITIONS_KEY, PROCEDURES_KEY

_PROC_EXCLUDED = {"not-done", "entered-in-error", "preparation"}
_COND_REFUTED = {"refuted", "entered-in-error"}
_COND_INACTIVE = {"inactive", "resolved", "remission"}


class ConditionRules:
    """The condition and procedure rules of a Mapper (which provides the attributes annotated here)."""

    anchor: datetime
    _sources: dict[str, Source]
    _miss: Callable[[str, str], None]
    _resources: Callable[..., list[Any] | None]
    _extra: Callable[[str], set[tuple[str, str]]]

    def _flags(self, record: dict[str, Any]) -> None:
        conditions = self._resources(CONDITIONS_KEY, "Condition")
        procedures = self._resources(PROCEDURES_KEY, "Procedure")
        for flag in ("prior_neuro_comorbidity", "cns_involvement"):
            if conditions is None:
                self._miss(flag, f"prefetch '{CONDITIONS_KEY}' was not provided")
                continue
            hit = self._first_match(flag, conditions)
            record[flag] = hit is not None
            if hit is not None:
                self._sources[flag] = hit
        hit = self._first_match("prior_allo_hct", (procedures or []) + (conditions or []))
        if hit is not None:
            record["prior_allo_hct"] = True
            self._sources["prior_allo_hct"] = hit
        elif procedures is None:
            self._miss("prior_allo_hct", f"prefetch '{PROCEDURES_KEY}' was not provided")
        else:
            record["prior_allo_hct"] = False

    def _first_match(self, flag: str, resources: list[Any]) -> Source | None:
        table = C.FLAGS[flag]
        extra = self._extra(flag)
        for r in resources:
            kind = r.get_resource_type()
            if kind == "Condition":
                if status_code(r.verificationStatus) in _COND_REFUTED:
                    continue
                if flag == "cns_involvement" and status_code(r.clinicalStatus) in _COND_INACTIVE:
                    continue
                when = as_instant(
                    r.onsetDateTime or (r.onsetPeriod.start if r.onsetPeriod else None) or r.recordedDate,
                    partial="start",
                )
            else:
                if r.status in _PROC_EXCLUDED:
                    continue
                when = as_instant(
                    r.performedDateTime or (r.performedPeriod.start if r.performedPeriod else None),
                    partial="start",
                )
            if when is not None and when > self.anchor:
                continue
            why = _matches(table, r.code, extra, allo=flag == "prior_allo_hct")
            if why:
                return Source(reference=reference_of(r), time=when, text=f"{kind}: {why}")
        return None


def _icd(code: str) -> str:
    return code.replace(".", "").upper()


def _matches(table: C.FlagCodes, concept: Any, extra: set, *, allo: bool) -> str | None:
    """What in this code matches the table (a short label), else None."""
    if concept is None:
        return None
    texts = concept_texts(concept)
    blob = " | ".join(texts)
    if re.search(C.NEGATION_PATTERN, blob):
        return None
    if allo and re.search(C.AUTOLOGOUS_PATTERN, blob):
        return None
    label = concept_label(concept)
    for system, code in concept_tokens(concept):
        if (system, code) in extra:
            return f"{label} ({system}|{code})"
        if system == C.SNOMED and code in table.snomed:
            return f"{label} (SNOMED CT {code})"
        if system in C.ICD10_SYSTEMS:
            for prefix in table.icd10_prefixes:
                if _icd(code).startswith(_icd(prefix)):
                    return f"{label} (ICD-10 {code})"
    for pattern in table.text_patterns:
        if re.search(pattern, blob):
            return f"{label} (text)"
    return None
