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
    unit: str | None = None  # None: the value has no unit (categories, yes/no); JSON says null
    required: bool = True
    # Hard (physically possible) range; `min_exclusive` for "> 0".
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    categories: tuple[str, ...] = ()
    loinc: str | None = None
    # Direction of the published effect of the BASELINE value on severe neurotoxicity (+1 raises
    # risk), enforced as a monotone constraint in the tree models; 0 where no source in
    # ../shared/reference/clinical-evidence.md supports a baseline direction (then the fitted
    # direction is shown, not enforced).
    direction: int = 0
    # Per level of a category with more than two levels: the direction its indicator is held to
    # (a product that fixes the costimulatory domain carries that domain's direction; see `product`).
    level_directions: tuple[int, ...] = ()
    # The source of `direction`/`level_directions` (clinical-evidence.md), or why there is none.
    evidence: str = ""
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
        return unit or ""

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
        evidence="Gust 2017: grade 3-5 28% vs 16%, multivariable p=0.0023 [V]",
        example=False,
    ),
    Feature(
        "cns_involvement", "bool", "Active CNS leukemia (CNS2/CNS3)", direction=1,
        evidence="Gust 2017 (neurological comorbidity incl. CNS involvement) [V]; brexu-cel real world, "
                 "active CNS disease 35.3% vs 28.8% (Muhsen 2024 [V2])",
        example=False,
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
        evidence="Gust 2017: median 25.8% vs 0.6% blasts, multivariable p=0.0165 [V]; FELIX >20% vs <=20% [V]",
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
        evidence="high LDH HR about 5 (ASH 2021 organ-toxicity cohort [V]); EASIX factor (Korell 2022 [V])",
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
        # A licensed product fixes the costimulatory domain, so a tree could carry the domain's effect
        # on the product's indicator, where the domain's constraint never reaches: each indicator of a
        # product that fixes the domain is held to that domain's direction (CD28 product +1, 4-1BB
        # products -1), so that all else equal a CD28 product never scores below a 4-1BB product.
        # "other" fixes nothing (its domain is in `costimulatory_domain`) and is free; nothing orders
        # the two 4-1BB products against each other.
        level_directions=(-1, 1, -1, 0),
        evidence="the costimulatory domain's (Han 2024 [V]): brexucabtagene CD28; tisagenlecleucel, "
                 "obecabtagene 4-1BB",
        example="brexucabtagene_autoleucel",
    ),
    Feature(
        "costimulatory_domain",
        "category",
        "CAR costimulatory domain",
        categories=("4-1BB", "CD28"),
        direction=1,  # CD28 (the second category) raises risk
        evidence="CD28 vs 4-1BB OR about 2.2 (B-ALL trials) to 5.5 (real-world LBCL), Han 2024 [V]",
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
        evidence="Gust 2017 dose escalation: 58% at 2e7/kg vs about 19% at 2e6/kg [V]",
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
        evidence="baseline CRP, ferritin OR about 1.3-1.5 per doubling [D] (Greenbaum 2021; Rejeski 2023 [V])",
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
        direction=-1,  # low platelets before lymphodepletion raise risk
        evidence="low platelets before lymphodepletion: Hay 2017 [V], PrCRS 53 vs 91 [V]; EASIX (Korell 2022 [V])",
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
        # not enforced: the only source is the EASIX composite (LDH x creatinine / platelets; Korell
        # 2022), whose OR per doubling is the composite's; no baseline effect of creatinine itself
        evidence="none of its own: only as a factor of the EASIX composite (Korell 2022)",
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
        evidence="baseline CRP, ferritin OR about 1.3-1.5 per doubling [D] (Greenbaum 2021; CAR-HEMATOTOX, Rejeski 2023 [V])",
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
        # not enforced: the published links are post-infusion peaks (Santomasso 2018; Gofshteyn 2018),
        # not baseline values; no baseline direction was found
        evidence="none at baseline: published links are post-infusion peaks (Santomasso 2018; Gofshteyn 2018)",
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
        evidence="none at baseline: published links are post-infusion peaks (Santomasso 2018; Gofshteyn 2018)",
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
        evidence="none at baseline: published links are post-infusion peaks (Santomasso 2018; Gofshteyn 2018)",
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
# Optional: the treating centre, a short code (issue 27). It identifies the validation design's
# groups (internal-external cross-validation by centre, pipeline/train/iecv.py) and is never a model
# feature nor part of an answer.
CENTRE_COLUMN = "centre"
CENTRE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$"
CENTRE_RULE = "must be a short code: 1-16 letters, digits, '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class Outcome:
    """A predicted outcome and every name it goes by, so that each is written here only."""

    name: str
    description: str
    registered_model: str
    label: str = ""  # in prose and figure titles: "severe ICANS"
    short: str = ""  # with its rule, for headlines: "severe ICANS (grade >=3)"
    code: str = ""  # the local code system's code (FHIR): "severe-icans"


# The severe-grade rule: an ASTCT grade at or above this is "severe" (severe_icans, severe_crs).
SEVERE_GRADE = 3

OUTCOMES: dict[str, Outcome] = {
    "severe_icans": Outcome(
        "severe_icans", f"ASTCT ICANS grade >= {SEVERE_GRADE} within 30 days", "icans-risk",
        "severe ICANS", f"severe ICANS (grade >={SEVERE_GRADE})", "severe-icans",
    ),
    "severe_crs": Outcome("severe_crs", f"ASTCT CRS grade >= {SEVERE_GRADE}", "crs-risk",
                          "severe CRS", f"severe CRS (grade >={SEVERE_GRADE})", "severe-crs"),
}
DEFAULT_OUTCOME = "severe_icans"
GRADE_COLUMN = "icans_max_grade"
# The true probability a synthetic row was drawn with (the oracle); absent from real cohorts.
ORACLE_COLUMN = "p_true"

# Columns that describe what happened after infusion or the truth of a synthetic row: they are
# never model inputs, whatever file they arrive in.
NON_FEATURE_COLUMNS: frozenset[str] = frozenset(
    {ID_COLUMN, GRADE_COLUMN, ORACLE_COLUMN, CENTRE_COLUMN, *OUTCOMES}
)

def outcome_of(name: str | None) -> Outcome:
    """The named outcome; a bundle from before outcomes were recorded predicts the default one."""
    return OUTCOMES.get(name or DEFAULT_OUTCOME, OUTCOMES[DEFAULT_OUTCOME])


def intended_use(outcome: str | None = None) -> str:
    """The notice every answer carries, naming the outcome the serving model predicts."""
    what = outcome_of(outcome).label
    return (
        f"Research use only. Not a medical device. This estimate of the risk of {what} "
        f"(ASTCT grade >= {SEVERE_GRADE}) after CAR T-cell therapy is not a treatment recommendation."
    )


INTENDED_USE = intended_use()  # the default outcome's (severe ICANS) notice


def example_request() -> dict[str, float | bool | str]:
    """A valid request body, built from the per-feature examples."""
    return {f.name: f.example for f in FEATURES if f.example is not None}


def markdown_table() -> str:
    """The contract as the README's table."""
    rows = [
        "| column | type | unit | allowed values | required | LOINC | monotone effect | description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in FEATURES:
        rows.append(
            f"| `{f.name}` | {f.kind} | {f.unit or '-'} | {f.range_text} | "
            f"{'yes' if f.required else 'no'} | {f.loinc or '-'} | {monotone_text(f)} | "
            f"{f.description} |"
        )
    return "\n".join(rows)


def monotone_text(f: Feature) -> str:
    """The constraint a feature is held to, in words ("-" when none is enforced)."""
    arrows = {1: "raises risk", -1: "lowers risk"}
    if f.level_directions:
        held = [f"{c} {arrows[d]}" for c, d in zip(f.categories, f.level_directions) if d]
        return "; ".join(held) if held else "-"
    return arrows.get(f.direction, "-")
