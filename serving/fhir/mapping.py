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
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pipeline.contract import FEATURE_NAMES, FEATURES_BY_NAME
from serving.fhir import codes as C

# Prefetch keys besides the laboratory ones.
PATIENT_KEY = "patient"
CONDITIONS_KEY = "conditions"
PROCEDURES_KEY = "procedures"
MEDICATIONS_KEY = "medications"
WEIGHT_KEY = "body-weight"

_OBS_OK = {"final", "amended", "corrected"}
_MED_EXCLUDED = {"cancelled", "entered-in-error"}
_PROC_EXCLUDED = {"not-done", "entered-in-error", "preparation"}
_COND_REFUTED = {"refuted", "entered-in-error"}
_COND_INACTIVE = {"inactive", "resolved", "remission"}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class PrefetchError(ValueError):
    """A prefetched value is not valid FHIR (answered 400; the message never echoes values)."""


@dataclass
class Missing:
    feature: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"feature": self.feature, "reason": self.reason}


@dataclass
class Source:
    """Where a feature's value came from, for the card and the RiskAssessment basis."""

    reference: str | None = None
    time: datetime | None = None
    original: str | None = None  # as recorded, e.g. "0.8 mg/dL"
    text: str | None = None  # what matched, e.g. "Procedure: Hemopoietic stem cell transplant"


@dataclass
class Mapped:
    record: dict[str, Any]
    missing: list[Missing]
    sources: dict[str, Source]
    notes: list[str]
    anchor: datetime
    window_start: datetime

    @property
    def complete(self) -> bool:
        return not self.missing


# --------------------------------------------------------------------------------------------------
# Parsing prefetch values


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
        resource = cls.model_validate(dict(value))
    except ValidationError as exc:
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise PrefetchError(f"prefetch '{key}': invalid {value['resourceType']} ({where})") from None
    if resource.get_resource_type() == "Bundle":
        return [e.resource for e in (resource.entry or []) if e.resource is not None]
    return [resource]


def is_unsatisfied(value: Any) -> bool:
    """An OperationOutcome in place of data: the client could not prefetch this key."""
    return isinstance(value, Mapping) and value.get("resourceType") == "OperationOutcome"


# --------------------------------------------------------------------------------------------------
# Small helpers


def as_instant(value: Any, partial: str = "none") -> datetime | None:
    """FHIR date/dateTime/instant -> aware UTC datetime.

    A date is its midnight UTC. Partial dates ("2020", "2020-05") give None, or with
    partial="start" the first day of the period, with partial="middle" its middle.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", value)
        if m and partial != "none":
            year = int(m.group(1))
            if m.group(2):
                month = int(m.group(2))
                return datetime(year, month, 1 if partial == "start" else 15, tzinfo=UTC)
            return datetime(year, 1, 1, tzinfo=UTC) if partial == "start" else datetime(year, 7, 2, tzinfo=UTC)
    return None


def _texts(concept: Any) -> list[str]:
    """The text and codings' displays of a CodeableConcept, lower-cased."""
    if concept is None:
        return []
    out = [concept.text] if getattr(concept, "text", None) else []
    out += [c.display for c in (concept.coding or []) if c.display]
    return [t.lower() for t in out]


def _tokens(concept: Any) -> set[tuple[str, str]]:
    if concept is None:
        return set()
    return {(c.system or "", c.code) for c in (concept.coding or []) if c.code}


def _label(concept: Any) -> str:
    if concept is None:
        return "?"
    if concept.text:
        return concept.text
    for c in concept.coding or []:
        if c.display:
            return c.display
    for c in concept.coding or []:
        if c.code:
            return f"{c.system or ''}|{c.code}"
    return "?"


def _ref(resource: Any) -> str | None:
    rid = getattr(resource, "id", None)
    return f"{resource.get_resource_type()}/{rid}" if rid else None


def _fmt_date(t: datetime | None) -> str:
    return t.date().isoformat() if t else "undated"


def _fmt_num(x: float) -> str:
    return f"{x:.4g}"


def _subject_ok(resource: Any, patient_id: str) -> bool:
    """False if the resource names another patient as its subject (never mix patients)."""
    subject = getattr(resource, "subject", None) or getattr(resource, "patient", None)
    ref = getattr(subject, "reference", None) if subject is not None else None
    if not ref:
        return True
    ref = ref.split("/_history/")[0]
    return re.search(r"(^|/)Patient/" + re.escape(patient_id) + r"$", ref) is not None


# --------------------------------------------------------------------------------------------------
# The mapper


@dataclass
class Mapper:
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
            if not _subject_ok(r, self.patient_id):
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
                    f"{_fmt_date(self.window_start)} and {_fmt_date(self.anchor)}",
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
            if not (_tokens(obs.code) & wanted):
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
            target = C.CONTRACT_UCUM[FEATURES_BY_NAME[feature].unit] if feature else "kg"
            shown = q.comparator or C.normalise_unit(unit) != C.normalise_unit(target)
            original = f"{q.comparator or ''}{_fmt_num(raw)} {q.unit or unit}" if shown else None
            named = obs.code.text or next((c.display for c in obs.code.coding or [] if c.display), None)
            source = Source(reference=_ref(obs), time=when, original=original, text=named)
            if best is None or when > best[0]:
                if q.comparator:
                    source.text = f"reported as {q.comparator}{_fmt_num(raw)}; the limit was used"
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

    # -- medications -------------------------------------------------------------------------------

    def _medication_names(self, mr: Any, medications: dict[str, Any]) -> tuple[list[str], set]:
        concept = mr.medicationCodeableConcept
        texts: list[str] = []
        tokens: set = set()
        if concept is not None:
            texts += _texts(concept)
            tokens |= _tokens(concept)
        ref = mr.medicationReference
        if ref is not None:
            if ref.display:
                texts.append(ref.display.lower())
            target = None
            if ref.reference:
                if ref.reference.startswith("#"):
                    target = next(
                        (c for c in (mr.contained or []) if c.get_resource_type() == "Medication" and c.id == ref.reference[1:]),
                        None,
                    )
                else:
                    target = medications.get(ref.reference.split("/_history/")[0].rsplit("/", 2)[-1])
            if target is not None:
                texts += _texts(target.code)
                tokens |= _tokens(target.code)
        return texts, tokens

    @staticmethod
    def _medication_label(mr: Any, medications: dict[str, Any]) -> str:
        if mr.medicationCodeableConcept is not None:
            return _label(mr.medicationCodeableConcept)
        ref = mr.medicationReference
        if ref is not None and ref.reference and not ref.reference.startswith("#"):
            target = medications.get(ref.reference.split("/_history/")[0].rsplit("/", 2)[-1])
            if target is not None and target.code is not None:
                return _label(target.code)
        return (ref.display if ref is not None else None) or "medication"

    @staticmethod
    def _med_time(mr: Any) -> datetime | None:
        """Planned start of administration, else authoredOn."""
        for d in mr.dosageInstruction or []:
            timing = d.timing
            if timing is None:
                continue
            if timing.repeat is not None and timing.repeat.boundsPeriod is not None and timing.repeat.boundsPeriod.start:
                return as_instant(timing.repeat.boundsPeriod.start, partial="start")
            if timing.event:
                return as_instant(timing.event[0], partial="start")
        return as_instant(mr.authoredOn, partial="start")

    def _medications(self, resources: list[Any] | None, record: dict[str, Any]) -> datetime | None:
        """Product, costimulatory domain, target antigen and lymphodepletion; returns the order time."""
        product_features = ("product", "costimulatory_domain", "target_antigen")
        if resources is None:
            reason = f"prefetch '{MEDICATIONS_KEY}' was not provided"
            for name in (*product_features, "car_t_dose_10e6_per_kg", "lymphodepletion"):
                self._miss(name, reason)
            self._order = None
            return None
        medications = {m.id: m for m in resources if m.get_resource_type() == "Medication" and m.id}
        requests = [r for r in resources if r.get_resource_type() == "MedicationRequest" and r.status not in _MED_EXCLUDED]
        orders = []
        for mr in requests:
            texts, _ = self._medication_names(mr, medications)
            blob = " | ".join(texts)
            for product in C.PRODUCTS:
                if any(re.search(r"(?<![a-z])" + re.escape(n) + r"(?![a-z])", blob) for n in product.names):
                    orders.append((as_instant(mr.authoredOn, partial="start") or self._med_time(mr), mr, product))
                    break
        if not orders:
            reason = "no MedicationRequest names a known CAR T product (see serving/fhir/codes.py PRODUCTS)"
            for name in (*product_features, "car_t_dose_10e6_per_kg"):
                self._miss(name, reason)
            self._order = None
            order_time = None
        else:
            oldest = datetime(1, 1, 1, tzinfo=UTC)
            orders.sort(key=lambda o: o[0] or oldest, reverse=True)
            order_time, mr, product = orders[0]
            if len({o[2] for o in orders}) > 1:
                self._notes.append("several CAR T products were ordered; the latest order was used")
            self._order = mr
            record["product"] = product.product
            record["costimulatory_domain"] = product.costimulatory_domain
            record["target_antigen"] = product.target_antigen
            src = Source(reference=_ref(mr), time=order_time, text=self._medication_label(mr, medications))
            for name in product_features:
                self._sources[name] = src
        self._lymphodepletion(requests, medications, order_time, record)
        return order_time

    def _lymphodepletion(self, requests: list[Any], medications: dict[str, Any], order_time: datetime | None, record: dict[str, Any]) -> None:
        centre = order_time or self.now
        span = timedelta(days=self.ld_window_days)
        found: dict[str, tuple[datetime, Any]] = {}
        for mr in requests:
            texts, tokens = self._medication_names(mr, medications)
            rxnorm = {c for s, c in tokens if s == C.RXNORM}
            blob = " | ".join(texts)
            for agent, (codes, names) in C.LYMPHODEPLETION_AGENTS.items():
                if rxnorm & codes or any(n in blob for n in names):
                    when = self._med_time(mr)
                    if when is None or abs(when - centre) > span:
                        continue
                    if agent not in found or when < found[agent][0]:
                        found[agent] = (when, mr)
        if not found:
            self._miss(
                "lymphodepletion",
                "no fludarabine, cyclophosphamide or bendamustine MedicationRequest within "
                f"{self.ld_window_days:g} days of the CAR T order",
            )
            return
        record["lymphodepletion"] = "flu_cy" if {"fludarabine", "cyclophosphamide"} <= set(found) else "other"
        start = min(t for t, _ in found.values())
        refs = ", ".join(sorted(filter(None, (_ref(mr) for _, mr in found.values()))))
        self._sources["lymphodepletion"] = Source(reference=refs or None, time=start, text=" + ".join(sorted(found)))

    def _dose(self, record: dict[str, Any], weight: tuple[float, Source] | None) -> None:
        mr = getattr(self, "_order", None)
        if mr is None:
            return
        quantity = None
        for d in mr.dosageInstruction or []:
            for dr in d.doseAndRate or []:
                if dr.doseQuantity is not None and dr.doseQuantity.value is not None:
                    quantity = dr.doseQuantity
                    break
            if quantity is not None:
                break
        if quantity is None:
            self._miss("car_t_dose_10e6_per_kg", "the CAR T MedicationRequest has no dosageInstruction.doseAndRate.doseQuantity")
            return
        unit = quantity.code if (quantity.code and quantity.system in (None, C.UCUM)) else (quantity.unit or "")
        per_kg, exponent = parse_cell_dose_unit(unit)
        value = float(quantity.value)
        original = f"{_fmt_num(value)} {quantity.unit or unit}"
        if exponent is None:
            self._miss("car_t_dose_10e6_per_kg", f"the dose unit '{unit}' is not a cell count (e.g. 10*6/kg)")
            return
        cells_1e6 = value * 10.0 ** (exponent - 6)
        if per_kg:
            dose = cells_1e6
            text = None
        else:
            if weight is None:
                self._miss(
                    "car_t_dose_10e6_per_kg",
                    "the dose is a total cell count and no body weight (LOINC 29463-7) lies in the window to express it per kg",
                )
                return
            dose = cells_1e6 / weight[0]
            text = f"total dose / body weight {_fmt_num(weight[0])} kg ({_fmt_date(weight[1].time)})"
        record["car_t_dose_10e6_per_kg"] = float(f"{dose:.12g}")
        shown = original if not (per_kg and exponent == 6) else None
        self._sources["car_t_dose_10e6_per_kg"] = Source(reference=_ref(mr), original=shown, text=text)

    # -- conditions and procedures ---------------------------------------------------------------

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
                if _status_code(r.verificationStatus) in _COND_REFUTED:
                    continue
                if flag == "cns_involvement" and _status_code(r.clinicalStatus) in _COND_INACTIVE:
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
                return Source(reference=_ref(r), time=when, text=f"{kind}: {why}")
        return None


def _status_code(concept: Any) -> str | None:
    for c in (concept.coding or []) if concept is not None else []:
        if c.code:
            return c.code
    return None


def _icd(code: str) -> str:
    return code.replace(".", "").upper()


def _matches(table: C.FlagCodes, concept: Any, extra: set, *, allo: bool) -> str | None:
    """What in this code matches the table (a short label), else None."""
    if concept is None:
        return None
    texts = _texts(concept)
    blob = " | ".join(texts)
    if re.search(C.NEGATION_PATTERN, blob):
        return None
    if allo and re.search(C.AUTOLOGOUS_PATTERN, blob):
        return None
    label = _label(concept)
    for system, code in _tokens(concept):
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


def parse_cell_dose_unit(unit: str) -> tuple[bool, int | None]:
    """(per_kg, power of ten) of a cell-dose unit: '10*6/kg' -> (True, 6); '10*8' -> (False, 8).

    UCUM annotations ({cells}, {CAR+T cells}) and words such as 'cells' are ignored; an empty or
    unrecognised unit gives (False, None).
    """
    if not unit or not unit.strip():
        return False, None
    u = re.sub(r"\{[^}]*\}", "", unit.lower())
    u = u.replace("×", "x").replace("^", "*")
    u = re.sub(r"x\s*10", "10", u)
    u = re.sub(r"10e(\d)", r"10*\1", u)
    u = re.sub(r"car\s*\+?\s*-?\s*t\b|car\+?|viable|cells?|\bt\b", "", u)
    u = u.replace(" ", "").replace("./", "/").strip(".")
    per_kg = u.endswith("/kg")
    if per_kg:
        u = u[: -len("/kg")].rstrip(".")
    if u in ("", "1"):
        return per_kg, 0
    m = re.fullmatch(r"10\*(\d{1,2})", u)
    return (per_kg, int(m.group(1))) if m else (False, None)


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


# --------------------------------------------------------------------------------------------------
# The prefetch templates the discovery document announces


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
