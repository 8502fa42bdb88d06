"""The data contract v1, declared once.

Every other representation of the columns (the pandera schema for cohort files, the pydantic
request model for the API, the OpenAPI example, the README table, the model matrix) is derived
from `FEATURES` and `OUTCOMES` below. Change a range here and all of them change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

CONTRACT_VERSION = "1"

Kind = Literal["float", "bool", "category"]


@dataclass(frozen=True)
class Feature:
    """One baseline column, measured before lymphodepletion."""

    name: str
    kind: Kind
    description: str
    unit: str = "-"
    required: bool = True
    # Hard (physically possible) range; `min_exclusive` for "> 0".
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    categories: tuple[str, ...] = ()
    loinc: str | None = None
    # Direction of the published effect on severe neurotoxicity (+1 raises risk), used as a
    # monotone constraint; 0 where the literature gives no reliable direction.
    direction: int = 0
    example: float | bool | str | None = None
    # What people read (the waterfall, the pages, the CDS card): a short name, the unit as printed,
    # and the categories in words; set from DISPLAY below. Machines keep name, unit and categories.
    label: str = ""
    display_unit: str | None = None
    category_labels: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        """The name people read: the label, else the description."""
        return self.label or self.description

    @property
    def unit_text(self) -> str:
        """The unit as people read it; '' when the value has none."""
        unit = self.unit if self.display_unit is None else self.display_unit
        return "" if unit == "-" else unit

    def category_text(self, value: str) -> str:
        """A category in words (the contract's code when it has no label)."""
        if value in self.categories and self.category_labels:
            return self.category_labels[self.categories.index(value)]
        return value

    @property
    def range_text(self) -> str:
        if self.kind == "category":
            return ", ".join(self.categories)
        if self.kind == "bool":
            return "true / false"
        low = f"> {_fmt(self.min)}" if self.min_exclusive else f">= {_fmt(self.min)}"
        return f"{low} and <= {_fmt(self.max)}"


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:g}"


FEATURES: tuple[Feature, ...] = (
    Feature("age_years", "float", "Age at infusion", "years", min=0.5, max=100, example=34.0),
    Feature("sex", "category", "Sex", categories=("female", "male"), example="female"),
    Feature(
        "prior_neuro_comorbidity",
        "bool",
        "Pre-existing neurological comorbidity (seizures, neuropathy, prior CNS toxicity, "
        "cognitive impairment)",
        direction=1,
        example=False,
    ),
    Feature(
        "cns_involvement", "bool", "Active CNS leukemia (CNS2/CNS3)", direction=1, example=False
    ),
    Feature("prior_allo_hct", "bool", "Prior allogeneic haematopoietic cell transplant", example=True),
    Feature(
        "marrow_blasts_pct",
        "float",
        "Bone-marrow blasts (tumour burden)",
        "%",
        min=0,
        max=100,
        loinc="26464-8",
        direction=1,
        example=12.0,
    ),
    Feature(
        "ldh_u_l",
        "float",
        "Lactate dehydrogenase",
        "U/L",
        min=30,
        max=20000,
        loinc="2532-0",
        direction=1,
        example=240.0,
    ),
    Feature(
        "product",
        "category",
        "CAR T-cell product",
        categories=(
            "tisagenlecleucel",
            "brexucabtagene_autoleucel",
            "obecabtagene_autoleucel",
            "other",
        ),
        example="brexucabtagene_autoleucel",
    ),
    Feature(
        "costimulatory_domain",
        "category",
        "CAR costimulatory domain",
        categories=("4-1BB", "CD28"),
        direction=1,  # CD28 (the second category) raises risk
        example="CD28",
    ),
    Feature(
        "target_antigen",
        "category",
        "CAR target antigen",
        categories=("CD19", "CD22", "CD19/CD22"),
        example="CD19",
    ),
    Feature(
        "car_t_dose_10e6_per_kg",
        "float",
        "CAR+ T-cell dose",
        "10^6 CAR+ cells/kg",
        min=0,
        max=100,
        min_exclusive=True,
        direction=1,
        example=1.0,
    ),
    Feature(
        "lymphodepletion",
        "category",
        "Lymphodepleting chemotherapy",
        categories=("flu_cy", "other"),
        example="flu_cy",
    ),
    Feature(
        "crp_mg_l",
        "float",
        "C-reactive protein",
        "mg/L",
        min=0,
        max=600,
        loinc="1988-5",
        direction=1,
        example=8.0,
    ),
    Feature(
        "platelets_10e9_l",
        "float",
        "Platelet count",
        "10^9/L",
        min=0,
        max=2000,
        loinc="777-3",
        direction=-1,  # low platelets before lymphodepletion raise risk (EASIX)
        example=85.0,
    ),
    Feature(
        "creatinine_mg_dl",
        "float",
        "Serum creatinine",
        "mg/dL",
        min=0.05,
        max=20,
        loinc="2160-0",
        direction=1,  # a factor of EASIX (LDH x creatinine / platelets; Korell 2022)
        example=0.7,
    ),
    Feature(
        "ferritin_ng_ml",
        "float",
        "Ferritin",
        "ng/mL",
        required=False,
        min=0,
        max=200000,
        loinc="2276-4",
        direction=1,
        example=650.0,
    ),
    Feature(
        "il6_pg_ml",
        "float",
        "Interleukin-6",
        "pg/mL",
        required=False,
        min=0,
        max=100000,
        loinc="26881-3",
        # baseline cytokines: only the direction is published (every link found is positive:
        # post-infusion peaks, Santomasso 2018; Gofshteyn 2018), no baseline effect size
        direction=1,
        example=6.0,
    ),
    Feature(
        "ifng_pg_ml",
        "float",
        "Interferon-gamma",
        "pg/mL",
        required=False,
        min=0,
        max=100000,
        loinc="27415-9",
        direction=1,  # as IL-6
        example=None,
    ),
    Feature(
        "il15_pg_ml",
        "float",
        "Interleukin-15 (no LOINC code; use a local code)",
        "pg/mL",
        required=False,
        min=0,
        max=100000,
        direction=1,  # as IL-6
        example=None,
    ),
)

# The names people read, kept apart from the rules above: one place for the waterfall, the
# explanation page, the calculator and the CDS card.
DISPLAY: dict[str, dict[str, Any]] = {
    "age_years": {"label": "Age"},
    "sex": {"label": "Sex"},
    "prior_neuro_comorbidity": {"label": "Neurological comorbidity"},
    "cns_involvement": {"label": "Active CNS leukaemia"},
    "prior_allo_hct": {"label": "Prior allogeneic transplant"},
    "marrow_blasts_pct": {"label": "Bone-marrow blasts"},
    "ldh_u_l": {"label": "LDH"},
    "product": {
        "label": "CAR T-cell product",
        "category_labels": ("tisagenlecleucel", "brexucabtagene autoleucel", "obecabtagene autoleucel", "other"),
    },
    "costimulatory_domain": {"label": "Costimulatory domain"},
    "target_antigen": {"label": "Target antigen"},
    "car_t_dose_10e6_per_kg": {"label": "CAR T-cell dose", "display_unit": "× 10⁶ CAR+ cells/kg"},
    "lymphodepletion": {"label": "Lymphodepletion", "category_labels": ("fludarabine + cyclophosphamide", "other")},
    "crp_mg_l": {"label": "CRP"},
    "platelets_10e9_l": {"label": "Platelets", "display_unit": "× 10⁹/L"},
    "creatinine_mg_dl": {"label": "Creatinine"},
    "ferritin_ng_ml": {"label": "Ferritin"},
    "il6_pg_ml": {"label": "IL-6"},
    "ifng_pg_ml": {"label": "IFN-γ"},
    "il15_pg_ml": {"label": "IL-15"},
}
FEATURES = tuple(replace(f, **DISPLAY.get(f.name, {})) for f in FEATURES)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}

ID_COLUMN = "patient_id"


@dataclass(frozen=True)
class Outcome:
    name: str
    description: str
    registered_model: str


OUTCOMES: dict[str, Outcome] = {
    "severe_icans": Outcome(
        "severe_icans", "ASTCT ICANS grade >= 3 within 30 days", "icans-risk"
    ),
    "severe_crs": Outcome("severe_crs", "ASTCT CRS grade >= 3", "crs-risk"),
}
DEFAULT_OUTCOME = "severe_icans"
GRADE_COLUMN = "icans_max_grade"
# The true probability a synthetic row was drawn with (the oracle); absent from real cohorts.
ORACLE_COLUMN = "p_true"

# Columns that describe what happened after infusion or the truth of a synthetic row: they are
# never model inputs, whatever file they arrive in.
NON_FEATURE_COLUMNS: frozenset[str] = frozenset(
    {ID_COLUMN, GRADE_COLUMN, ORACLE_COLUMN, *OUTCOMES}
)

INTENDED_USE = (
    "Research use only. Not a medical device. This estimate of the risk of severe ICANS "
    "(ASTCT grade >= 3) after CAR T-cell therapy is not a treatment recommendation."
)


def example_request() -> dict[str, float | bool | str]:
    """A valid request body, built from the per-feature examples."""
    return {f.name: f.example for f in FEATURES if f.example is not None}


def markdown_table() -> str:
    """The contract as the README's table."""
    rows = [
        "| column | type | unit | allowed values | required | LOINC | monotone effect | description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    arrows = {1: "raises risk", -1: "lowers risk", 0: "-"}
    for f in FEATURES:
        rows.append(
            f"| `{f.name}` | {f.kind} | {f.unit} | {f.range_text} | "
            f"{'yes' if f.required else 'no'} | {f.loinc or '-'} | {arrows[f.direction]} | "
            f"{f.description} |"
        )
    return "\n".join(rows)
