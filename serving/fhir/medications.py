"""The CAR T order and lymphodepletion, from MedicationRequests (and the Medications they name).

Product (and so costimulatory domain and target antigen), the cell dose per kg, and the
lymphodepleting regimen; the rules are stated in `serving.fhir.mapping`'s docstring.
`MedicationRules` is a part of `serving.fhir.mapping.Mapper`, which holds the state it reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from serving.fhir import codes as C
from serving.fhir.datatypes import as_instant, concept_label, concept_texts, concept_tokens, fmt_date, fmt_num, reference_of
from serving.fhir.mapped import Source
from serving.fhir.prefetch import MEDICATIONS_KEY

_MED_EXCLUDED = {"cancelled", "entered-in-error"}


class MedicationRules:
    """The medication rules of a Mapper (which provides the attributes annotated here)."""

    now: datetime
    ld_window_days: float
    _sources: dict[str, Source]
    _notes: list[str]
    _miss: Callable[[str, str], None]

    def _medication_names(self, mr: Any, medications: dict[str, Any]) -> tuple[list[str], set]:
        concept = mr.medicationCodeableConcept
        texts: list[str] = []
        tokens: set = set()
        if concept is not None:
            texts += concept_texts(concept)
            tokens |= concept_tokens(concept)
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
                texts += concept_texts(target.code)
                tokens |= concept_tokens(target.code)
        return texts, tokens

    @staticmethod
    def _medication_label(mr: Any, medications: dict[str, Any]) -> str:
        if mr.medicationCodeableConcept is not None:
            return concept_label(mr.medicationCodeableConcept)
        ref = mr.medicationReference
        if ref is not None and ref.reference and not ref.reference.startswith("#"):
            target = medications.get(ref.reference.split("/_history/")[0].rsplit("/", 2)[-1])
            if target is not None and target.code is not None:
                return concept_label(target.code)
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
            src = Source(reference=reference_of(mr), time=order_time, text=self._medication_label(mr, medications))
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
        refs = ", ".join(sorted(filter(None, (reference_of(mr) for _, mr in found.values()))))
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
        original = f"{fmt_num(value)} {quantity.unit or unit}"
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
            if not weight[0] > 0 or not math.isfinite(weight[0]):
                self._miss("car_t_dose_10e6_per_kg", "the body weight (LOINC 29463-7) used to express the dose per kg is not a positive number")
                return
            dose = cells_1e6 / weight[0]
            text = f"total dose / body weight {fmt_num(weight[0])} kg ({fmt_date(weight[1].time)})"
        record["car_t_dose_10e6_per_kg"] = float(f"{dose:.12g}")
        shown = original if not (per_kg and exponent == 6) else None
        self._sources["car_t_dose_10e6_per_kg"] = Source(reference=reference_of(mr), original=shown, text=text)


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
