"""The documented code, unit and product tables used to read FHIR resources.

Laboratory codes come from the data contract (`core.contract.FEATURES[*].loinc`); this module
only adds what the contract does not carry: the local code for IL-15 (no LOINC code exists), the
UCUM unit conversions, the SNOMED CT / ICD-10 tables for the three yes/no features, the CAR T
product table and the lymphodepleting agents. A site adds its own codes with
`ICANS_CDS_EXTRA_CODES` (see `core/settings.py`), never by editing values here.

SNOMED CT and ICD-10 codes below are the ones this service recognises; verify them against your
own terminology release before clinical use (this service is research use only).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.contract import FEATURES, FEATURES_BY_NAME

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10_SYSTEMS = ("http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10")
# The service's own code system: IL-15 (no LOINC code), the contract features in the basis of a
# RiskAssessment, and the predicted outcome.
LOCAL = "urn:icans-risk:codes"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"

Token = tuple[str, str]  # (system, code)


# --------------------------------------------------------------------------------------------------
# Laboratory observations


# IL-15 has no LOINC code: it is looked for under this local code (and any code a site adds for
# "il15_pg_ml" in ICANS_CDS_EXTRA_CODES).
IL15_LOCAL: Token = (LOCAL, "IL15")
BODY_WEIGHT: Token = (LOINC, "29463-7")  # Body weight; converts a total CAR T dose to a dose per kg

LAB_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.loinc) + ("il15_pg_ml",)

# Prefetch key of each laboratory feature (one search per feature, so that a missing key names
# exactly what is missing).
LAB_KEYS: dict[str, str] = {
    "marrow_blasts_pct": "marrow-blasts",
    "ldh_u_l": "ldh",
    "crp_mg_l": "crp",
    "platelets_10e9_l": "platelets",
    "creatinine_mg_dl": "creatinine",
    "ferritin_ng_ml": "ferritin",
    "il6_pg_ml": "il6",
    "ifng_pg_ml": "ifng",
    "il15_pg_ml": "il15",
}
assert set(LAB_KEYS) == set(LAB_FEATURES), "every laboratory feature of the contract needs a prefetch key"


def lab_codes(feature: str) -> tuple[Token, ...]:
    """The built-in codes of a laboratory feature: its LOINC code from the contract, or IL-15's local code."""
    if feature == "il15_pg_ml":
        return (IL15_LOCAL,)
    loinc = FEATURES_BY_NAME[feature].loinc
    assert loinc, feature
    return ((LOINC, loinc),)


# UCUM code of each contract unit (used for the Quantities this service writes).
CONTRACT_UCUM: dict[str, str] = {
    "years": "a",
    "%": "%",
    "U/L": "U/L",
    "mg/L": "mg/L",
    "10^9/L": "10*9/L",
    "mg/dL": "mg/dL",
    "ng/mL": "ng/mL",
    "pg/mL": "pg/mL",
    "10^6 CAR+ cells/kg": "10*6/kg",
}
assert all(f.unit in CONTRACT_UCUM for f in FEATURES if f.kind == "float"), "a contract unit lacks its UCUM code"


def contract_ucum(feature: str) -> str:
    """The UCUM code of a numeric feature's contract unit (every float feature has one)."""
    return CONTRACT_UCUM[FEATURES_BY_NAME[feature].unit or ""]

# Unit conversion, UCUM-based. Each family maps a unit (lower-cased UCUM code) to its size in the
# family's base unit; a value converts to the contract unit when both units are in one family.
_MASS_CONC = {  # base g/L
    "g/l": 1.0,
    "g/dl": 10.0,
    "mg/ml": 1.0,
    "mg/dl": 1e-2,
    "mg/l": 1e-3,
    "ug/ml": 1e-3,
    "ug/dl": 1e-5,
    "ug/l": 1e-6,
    "ng/ml": 1e-6,
    "ng/dl": 1e-8,
    "ng/l": 1e-9,
    "pg/ml": 1e-9,
    "pg/l": 1e-12,
}
_NUMBER_CONC = {  # base /L
    "10*12/l": 1e12,
    "10*9/l": 1e9,
    "10*3/ul": 1e9,
    "10*3/mm3": 1e9,
    "/nl": 1e9,
    "10*6/l": 1e6,
    "/ul": 1e6,
    "/mm3": 1e6,
    "/l": 1.0,
}
_CATALYTIC_CONC = {  # base U/L (1 U = 1 umol/min; 1 ukat = 60 U)
    "u/l": 1.0,
    "[iu]/l": 1.0,
    "mu/ml": 1.0,
    "u/ml": 1e3,
    "ukat/l": 60.0,
    "nkat/l": 0.06,
}
_FRACTION = {"%": 1.0}
_FAMILIES = (_MASS_CONC, _NUMBER_CONC, _CATALYTIC_CONC, _FRACTION)

# Molar units of substances whose molar mass the service knows, to the contract unit directly.
# Creatinine: 1 mg/dL = 88.42 umol/L. Ferritin: 1 ng/mL = 2.247 pmol/L.
_MOLAR: dict[str, dict[str, float]] = {
    "creatinine_mg_dl": {"umol/l": 1 / 88.42, "mmol/l": 1000 / 88.42},
    "ferritin_ng_ml": {"pmol/l": 1 / 2.247},
}

# Common non-UCUM spellings of units in `Quantity.unit`, lower-cased, to their UCUM code.
_UNIT_SYNONYMS = {
    "iu/l": "[iu]/l",
    "k/ul": "10*3/ul",
    "10^3/ul": "10*3/ul",
    "x10^3/ul": "10*3/ul",
    "x10e3/ul": "10*3/ul",
    "10e3/ul": "10*3/ul",
    "thou/ul": "10*3/ul",
    "10^9/l": "10*9/l",
    "x10^9/l": "10*9/l",
    "x10e9/l": "10*9/l",
    "10e9/l": "10*9/l",
    "mcg/l": "ug/l",
    "mcg/ml": "ug/ml",
    "mcmol/l": "umol/l",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
}


def normalise_unit(unit: str) -> str:
    """Lower-cased UCUM-like form: micro signs to `u`, `^` to `*`, known synonyms resolved."""
    u = unit.strip().replace("µ", "u").replace("μ", "u").replace(" ", "").lower()
    u = _UNIT_SYNONYMS.get(u, u)
    return u.replace("^", "*")


def conversion_factor(feature: str, unit: str) -> float | None:
    """Multiply a value in `unit` by this to get the contract unit of `feature`; None if unknown."""
    target = normalise_unit(contract_ucum(feature))
    source = normalise_unit(unit)
    molar = _MOLAR.get(feature, {})
    if source in molar:
        return molar[source]
    for family in _FAMILIES:
        if source in family and target in family:
            return family[source] / family[target]
    return None


# Body weight to kg.
WEIGHT_TO_KG = {"kg": 1.0, "g": 1e-3, "[lb_av]": 0.45359237}


# --------------------------------------------------------------------------------------------------
# Conditions and procedures: the three yes/no features. No matching resource means false.


@dataclass(frozen=True)
class FlagCodes:
    """A yes/no feature: exact SNOMED CT codes, ICD-10(-CM) code prefixes, and text patterns."""

    snomed: dict[str, str]
    icd10_prefixes: dict[str, str]
    text_patterns: tuple[str, ...]  # regular expressions over code text and displays, lower-cased


NEURO_COMORBIDITY = FlagCodes(
    snomed={
        "84757009": "Epilepsy",
        "128613002": "Seizure disorder",
        "91175000": "Seizure",
        "386033004": "Neuropathy",
        "302226006": "Peripheral nerve disease",
        "386806002": "Impaired cognition",
        "52448006": "Dementia",
        "230690007": "Cerebrovascular accident",
        "24700007": "Multiple sclerosis",
        "49049000": "Parkinson's disease",
    },
    icd10_prefixes={
        "G40": "Epilepsy",
        "G41": "Status epilepticus",
        "R56": "Convulsions",
        "G60": "Hereditary and idiopathic neuropathy",
        "G61": "Inflammatory polyneuropathy",
        "G62": "Other polyneuropathies (including drug-induced)",
        "G63": "Polyneuropathy in diseases classified elsewhere",
        "G64": "Other disorders of peripheral nervous system",
        "G30": "Alzheimer disease",
        "F01": "Vascular dementia",
        "F02": "Dementia in other diseases",
        "F03": "Unspecified dementia",
        "G31.84": "Mild cognitive impairment",
        "I61": "Intracerebral haemorrhage",
        "I63": "Cerebral infarction",
        "G35": "Multiple sclerosis",
        "G20": "Parkinson disease",
        "G92": "Toxic encephalopathy (ICD-10-CM G92.0: ICANS, a prior CNS toxicity)",
    },
    text_patterns=(
        r"\bicans\b",
        r"immune effector cell[- ]associated neurotoxicity",
    ),
)

CNS_INVOLVEMENT = FlagCodes(
    snomed={"94225005": "Secondary malignant neoplasm of brain"},
    icd10_prefixes={
        "C79.3": "Secondary malignant neoplasm of brain and cerebral meninges",
        "C79.4": "Secondary malignant neoplasm of other parts of nervous system",
    },
    text_patterns=(
        r"\bcns ?[23][abc]?\b",
        r"\b(cns|central nervous system|meningeal|leptomeningeal|csf|cerebrospinal)\b.*\b(leuk|blast|involvement|infiltrat)",
        r"\b(leuk|blast)\w*\b.*\b(cns|central nervous system|meningeal|leptomeningeal|csf|cerebrospinal)\b",
    ),
)

# In B-ALL a haematopoietic cell transplant before CAR T cells is allogeneic in practice, so a
# generic HCT code counts as allogeneic unless its text says autologous.
PRIOR_ALLO_HCT = FlagCodes(
    snomed={
        "234336002": "Hemopoietic stem cell transplant",
        "23719005": "Transplantation of bone marrow",
        "234646005": "Graft-versus-host disease (implies an allogeneic transplant)",
    },
    icd10_prefixes={
        "Z94.81": "Bone marrow transplant status",
        "Z94.84": "Stem cells transplant status",
        "T86.0": "Complications of stem cell / bone marrow transplant",
        "D89.81": "Graft-versus-host disease (implies an allogeneic transplant)",
    },
    text_patterns=(
        r"\ballo(geneic|genic)?\b.*\b(transplant|hct|hsct|sct|bmt|stem cell)",
        r"\ballo-?(hct|hsct|sct|bmt)\b",
        r"graft[- ]versus[- ]host",
    ),
)
AUTOLOGOUS_PATTERN = r"\bauto(logous)?\b|\bauto-?(hct|hsct|sct|asct)\b"
# Text that denies what it names ("no CNS involvement", "CNS1") never counts.
NEGATION_PATTERN = r"\b(no|not|without|negative|absent|denies|excluded|cns ?1)\b"

FLAGS: dict[str, FlagCodes] = {
    "prior_neuro_comorbidity": NEURO_COMORBIDITY,
    "cns_involvement": CNS_INVOLVEMENT,
    "prior_allo_hct": PRIOR_ALLO_HCT,
}


# --------------------------------------------------------------------------------------------------
# CAR T products and lymphodepletion (MedicationRequest)


@dataclass(frozen=True)
class Product:
    product: str  # the contract category
    costimulatory_domain: str
    target_antigen: str
    names: tuple[str, ...]  # generic and brand names, lower-case, matched as words in code text/displays


PRODUCTS: tuple[Product, ...] = (
    Product("tisagenlecleucel", "4-1BB", "CD19", ("tisagenlecleucel", "tisa-cel", "kymriah")),
    Product("brexucabtagene_autoleucel", "CD28", "CD19", ("brexucabtagene autoleucel", "brexucabtagene", "brexu-cel", "tecartus")),
    Product("obecabtagene_autoleucel", "4-1BB", "CD19", ("obecabtagene autoleucel", "obecabtagene", "obe-cel", "aucatzyl")),
    # Licensed CD19 products outside the B-ALL labels: category "other" with their known construct.
    Product("other", "CD28", "CD19", ("axicabtagene ciloleucel", "axicabtagene", "axi-cel", "yescarta")),
    Product("other", "4-1BB", "CD19", ("lisocabtagene maraleucel", "lisocabtagene", "liso-cel", "breyanzi")),
)
assert all(p.product in FEATURES_BY_NAME["product"].categories for p in PRODUCTS)
assert all(p.costimulatory_domain in FEATURES_BY_NAME["costimulatory_domain"].categories for p in PRODUCTS)
assert all(p.target_antigen in FEATURES_BY_NAME["target_antigen"].categories for p in PRODUCTS)

# Lymphodepleting agents: RxNorm ingredient codes and names. Fludarabine + cyclophosphamide is
# "flu_cy"; any other combination of these agents is "other".
LYMPHODEPLETION_AGENTS: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "fludarabine": ({"24698"}, ("fludarabine",)),
    "cyclophosphamide": ({"3002"}, ("cyclophosphamide",)),
    "bendamustine": ({"134547"}, ("bendamustine",)),
}


def parse_token(token: str) -> Token:
    """`system|code` -> (system, code)."""
    system, sep, code = token.rpartition("|")
    if not sep or not system or not code:
        raise ValueError(f"a code must be written system|code, not {token!r}")
    return system, code
