"""FHIR resources (CDS Hooks prefetch) -> one feature record of the data contract.

Rules, in order (each documented where a clinician would look for it: the card says which values
were used and which were ignored):

- **Anchor.** Baseline means before lymphodepletion. The anchor is the earliest of: the time of
  the request, the CAR T order's `authoredOn`, and the start of lymphodepletion (the earliest
  fludarabine/cyclophosphamide/bendamustine order near the CAR T order). Nothing dated after the
  anchor is used.
- **Laboratory values.** For each feature, the Observations carrying its code (LOINC from the
  data contract; IL-15 under the local code `urn:icans-risk:codes|IL15`; plus site codes from
  `ICANS_CDS_EXTRA_CODES`) with status final/amended/corrected, a time, a numeric
  `valueQuantity` whose unit converts to the contract unit (UCUM; see `codes.py`) and a time
  inside [anchor - `ICANS_CDS_BASELINE_WINDOW_DAYS`, anchor]. The latest one wins.
- **Patient.** `gender` male/female -> sex; `birthDate` -> age at the anchor (a year-only birth
  date is taken as 2 July, a year-month as the 15th).
- **CAR T product.** The latest MedicationRequest (not cancelled or entered in error) whose
  medication code text or display names a product of `codes.PRODUCTS` (generic or brand name);
  the product gives the costimulatory domain and target antigen. The dose is the first
  `dosageInstruction.doseAndRate.doseQuantity`: a per-kg dose (UCUM `10*6/kg`, annotations such
  as `{cells}` ignored) is used as is; a total cell count is divided by the latest body weight
  (LOINC 29463-7) inside the window.
- **Lymphodepletion.** MedicationRequests for fludarabine and cyclophosphamide (RxNorm or name)
  dated within `ICANS_CDS_LYMPHODEPLETION_WINDOW_DAYS` of the CAR T order -> `flu_cy`; any
  other of the known agents -> `other`; none -> missing.
- **Yes/no features.** Conditions (and, for prior allogeneic transplant, Procedures) that match
  the tables in `codes.py` (SNOMED CT, ICD-10 prefixes, text), dated on or before the anchor, not
  refuted or entered in error (CNS involvement must also not be inactive/resolved/in remission).
  No matching resource means false, but only when the list was actually received.

What cannot be determined is reported as missing (with the reason) instead of guessed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.contract import FEATURE_NAMES, FEATURES_BY_NAME
from serving.fhir import codes as C
from serving.fhir.conditions import ConditionRules
from serving.fhir.datatypes import FHIR_ID, as_instant, concept_tokens, fmt_date, fmt_num, reference_of, subject_ok
from serving.fhir.mapped import Mapped, Missing, Source
from serving.fhir.medications import MedicationRules, parse_cell_dose_unit
from serving.fhir.prefetch import (
    CONDITIONS_KEY,
    MEDICATIONS_KEY,
    PATIENT_KEY,
    PROCEDURES_KEY,
    WEIGHT_KEY,
    PrefetchError,
    is_unsatisfied,
    prefetch_templates,
    resources_of,
)

# Re-exported: the CDS Hooks route and the tests import these from here.
__all__ = [
    "CONDITIONS_KEY", "FHIR_ID", "MEDICATIONS_KEY", "PATIENT_KEY", "PROCEDURES_KEY", "WEIGHT_KEY", "Mapped", "Mapper",
    "Missing", "PrefetchError", "Source", "as_instant", "is_unsatisfied", "map_prefetch", "parse_cell_dose_unit",
    "prefetch_templates", "resources_of",
]

_OBS_OK = {"final", "amended", "corrected"}


@dataclass
class Mapper(MedicationRules, ConditionRules):
    """One request's mapping. `data` holds only the prefetch keys that were received (None = no data)."""

    patient_id: str
    data: dict[str, Any]
    now: datetime
    window_days: float = 14.0
    ld_window_days: float = 30.0
    extra_codes: Mapping[str, Iterable[str]] = field(default_factory=dict)
    _missing: list[Missing] = field(default_factory=list)
    _sources: dict[str, Source] = field(default_factory=dict)
    _notes: list[str] = field(default_factory=list)

    def _extra(self, name: str) -> set[tuple[str, str]]:
        return {C.parse_token(t) for t in self.extra_codes.get(name, ())}

    def _resources(self, key: str, kind: str | None = None) -> list[Any] | None:
        """Resources of one key (None if the key was not received); other patients' resources are dropped."""
        if key not in self.data:
            return None
        out = []
        dropped = 0
        for r in resources_of(key, self.data[key]):
            if kind is not None and r.get_resource_type() != kind:
                continue
            if not subject_ok(r, self.patient_id):
                dropped += 1
                continue
            out.append(r)
        if dropped:
            self._notes.append(f"{dropped} {kind or 'resource'}(s) in '{key}' belong to another patient and were ignored")
        return out

    def _miss(self, feature: str, reason: str) -> None:
        self._missing.append(Missing(feature, reason))

    # -- entry point ------------------------------------------------------------------------------

    def run(self) -> Mapped:
        record: dict[str, Any] = {name: None for name in FEATURE_NAMES}
        meds = self._resources(MEDICATIONS_KEY)
        order_time = self._medications(meds, record)
        anchor = self.now
        ld_start = self._sources.get("lymphodepletion", Source()).time
        for t in (order_time, ld_start):
            if t is not None and t < anchor:
                anchor = t
        self.anchor = anchor
        self.window_start = anchor - timedelta(days=self.window_days)
        self._patient(record)
        weight = self._latest_weight()
        self._dose(record, weight)
        for feature in C.LAB_FEATURES:
            self._lab(feature, record)
        self._flags(record)
        order = {name: i for i, name in enumerate(FEATURE_NAMES)}
        missing = sorted(self._missing, key=lambda m: order.get(m.feature, len(order)))
        return Mapped(record, missing, self._sources, self._notes, anchor, self.window_start)

    # -- patient --------------------------------------------------------------------------------

    def _patient(self, record: dict[str, Any]) -> None:
        resources = self._resources(PATIENT_KEY, "Patient")
        if resources is None:
            reason = f"prefetch '{PATIENT_KEY}' was not provided"
            self._miss("age_years", reason)
            self._miss("sex", reason)
            return
        patients = [p for p in resources if p.id in (None, self.patient_id)]
        if not patients:
            reason = "no Patient resource for context.patientId"
            self._miss("age_years", reason)
            self._miss("sex", reason)
            return
        p = patients[0]
        ref = f"Patient/{self.patient_id}"
        if p.gender in ("female", "male"):
            record["sex"] = p.gender
            self._sources["sex"] = Source(reference=ref)
        else:
            self._miss("sex", "Patient.gender is not female or male (the model knows only these two)"
                       if p.gender else "Patient.gender is not recorded")
        birth = as_instant(p.birthDate, partial="middle")
        if birth is None:
            self._miss("age_years", "Patient.birthDate is not recorded")
        else:
            age = (self.anchor - birth).days / 365.25
            record["age_years"] = round(age, 2)
            self._sources["age_years"] = Source(
                reference=ref, text=f"born {p.birthDate}, age on {self.anchor.date().isoformat()}"
            )

    # -- laboratory ------------------------------------------------------------------------------

    def _lab(self, feature: str, record: dict[str, Any]) -> None:
        f = FEATURES_BY_NAME[feature]
        key = C.LAB_KEYS[feature]
        wanted = set(C.lab_codes(feature)) | self._extra(feature)
        resources = self._resources(key, "Observation")
        code_text = ", ".join(f"{s}|{c}" for s, c in sorted(wanted))
        if resources is None:
            if f.required:
                self._miss(feature, f"prefetch '{key}' ({code_text}) was not provided")
            else:
                self._notes.append(f"{feature}: prefetch '{key}' was not provided; handled as missing")
            return
        best = self._latest_quantity(resources, wanted, feature)
        if best is None:
            if f.required:
                self._miss(
                    feature,
                    f"no usable {f.description} result ({code_text}) between "
                    f"{fmt_date(self.window_start)} and {fmt_date(self.anchor)}",
                )
            return
        value, source = best
        record[feature] = value
        self._sources[feature] = source

    def _latest_quantity(self, observations: list[Any], wanted: set, feature: str | None) -> tuple[float, Source] | None:
        """The latest usable value in the window, converted; counts what was skipped into the notes."""
        skipped: dict[str, int] = {}
        best: tuple[datetime, float, Source] | None = None
        label = feature or "body weight"

        def skip(why: str) -> None:
            skipped[why] = skipped.get(why, 0) + 1

        for obs in observations:
            if not (concept_tokens(obs.code) & wanted):
                continue
            if obs.status not in _OBS_OK:
                skip(f"status {obs.status}")
                continue
            when = as_instant(
                obs.effectiveDateTime
                or obs.effectiveInstant
                or (obs.effectivePeriod.end or obs.effectivePeriod.start if obs.effectivePeriod else None)
                or obs.issued
            )
            if when is None:
                skip("no date")
                continue
            if when > self.anchor:
                skip("after the anchor")
                continue
            if when < self.window_start:
                skip("older than the baseline window")
                continue
            q = obs.valueQuantity
            if q is None or q.value is None:
                skip("no numeric value")
                continue
            unit = q.code if (q.code and (q.system in (None, C.UCUM))) else q.unit
            if feature is None:
                factor = C.WEIGHT_TO_KG.get(C.normalise_unit(unit)) if unit else None
            else:
                factor = C.conversion_factor(feature, unit) if unit else None
            if factor is None:
                skip(f"unit '{unit}' not convertible" if unit else "no unit")
                continue
            raw = float(q.value)
            if not math.isfinite(raw):
                skip("not a finite number")
                continue
            value = raw * factor
            if factor != 1.0:
                value = float(f"{value:.12g}")  # drop conversion noise (e.g. 8.000000000000002)
            target = C.contract_ucum(feature) if feature else "kg"
            shown = q.comparator or C.normalise_unit(unit) != C.normalise_unit(target)
            original = f"{q.comparator or ''}{fmt_num(raw)} {q.unit or unit}" if shown else None
            named = obs.code.text or next((c.display for c in obs.code.coding or [] if c.display), None)
            source = Source(reference=reference_of(obs), time=when, original=original, text=named)
            if best is None or when > best[0]:
                if q.comparator:
                    source.text = f"reported as {q.comparator}{fmt_num(raw)}; the limit was used"
                best = (when, value, source)
        if skipped:
            detail = "; ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
            self._notes.append(f"{label}: values ignored ({detail})")
        return None if best is None else (best[1], best[2])

    def _latest_weight(self) -> tuple[float, Source] | None:
        resources = self._resources(WEIGHT_KEY, "Observation")
        if not resources:
            return None
        return self._latest_quantity(resources, {C.BODY_WEIGHT}, None)


def map_prefetch(
    patient_id: str,
    data: dict[str, Any],
    *,
    now: datetime | None = None,
    window_days: float = 14.0,
    ld_window_days: float = 30.0,
    extra_codes: Mapping[str, Iterable[str]] | None = None,
) -> Mapped:
    """Map received prefetch data (key -> resource, Bundle or None) to a contract record."""
    if not FHIR_ID.match(patient_id):
        raise PrefetchError("context.patientId is not a FHIR id")
    mapper = Mapper(
        patient_id=patient_id,
        data={k: v for k, v in data.items() if not is_unsatisfied(v)},
        now=now or datetime.now(UTC),
        window_days=window_days,
        ld_window_days=ld_window_days,
        extra_codes=extra_codes or {},
    )
    return mapper.run()
