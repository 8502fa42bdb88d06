"""Request and response models. The request model is built from the contract, never by hand."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model

from core.contract import FEATURES, INTENDED_USE, Feature, example_request


def _field(f: Feature) -> tuple[Any, Any]:
    extra: dict[str, Any] = {"unit": f.unit} if f.unit else {}  # unitless: no "unit" key
    if f.loinc:
        extra["loinc"] = f.loinc
    description = f"{f.description} ({f.unit})" if f.unit else f.description
    if f.kind == "float":
        bounds: dict[str, float] = {"le": f.max}  # type: ignore[dict-item]
        bounds["gt" if f.min_exclusive else "ge"] = f.min  # type: ignore[assignment]
        annotation: Any = float
        # strict: a JSON boolean or string is not a number (lax mode would score true as 1.0)
        kwargs: dict[str, Any] = dict(allow_inf_nan=False, strict=True, **bounds)
    elif f.kind == "bool":
        annotation, kwargs = StrictBool, {}
    else:
        annotation, kwargs = Literal[f.categories], {}
    if f.required:
        return annotation, Field(..., description=description, json_schema_extra=extra, **kwargs)
    return annotation | None, Field(None, description=description, json_schema_extra=extra, **kwargs)


PatientFeatures: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "PatientFeatures",
    __config__=ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"patient_id": "pseudonym-0042", **example_request()}]},
    ),
    __doc__="Baseline features of one CAR T-cell infusion (data contract v1), measured before "
    "lymphodepletion. Optional laboratory values may be omitted or null.",
    patient_id=(
        str | None,
        Field(
            None,
            min_length=1,
            max_length=128,
            pattern=r"^[A-Za-z0-9._:\-]+$",
            description="Pseudonymous identifier (optional; never a feature)",
        ),
    ),
    **{f.name: _field(f) for f in FEATURES},
)


class Contribution(BaseModel):
    feature: str
    value: float | bool | str | None
    unit: str | None = Field(description="The contract's unit of value; null when the value has none (a category "
                                         "or yes/no)")
    log_odds: float = Field(description="SHAP value of this feature on the log-odds scale")


class Explanation(BaseModel):
    base_log_odds: float = Field(description="Expected log-odds over the development data")
    contributions: list[Contribution] = Field(
        description="Sorted by absolute effect; base_log_odds + sum(log_odds) == the answer's log_odds"
    )


class ModelUpdate(BaseModel):
    method: Literal["recalibration_in_the_large", "logistic_recalibration", "revision"]
    parent_version: str = Field(description="the registered version this one was updated from (make update)")


class ModelRef(BaseModel):
    name: str
    version: str
    run_id: str | None
    update: ModelUpdate | None = Field(default=None, description="present when this version is a local update")


class Uncertainty(BaseModel):
    """How much the risk depends on which patients the model happened to be developed on."""

    interval: tuple[float, float] = Field(
        description="95% model-development uncertainty of the risk: the 2.5th-97.5th percentiles of the risks "
        "that the chosen configuration (family and hyperparameters not re-tuned), refitted with its calibration on "
        "bootstrap samples of the development cohort, gives this patient. Not a confidence interval for the patient's outcome; it does not cover unmeasured "
        "patient-level effects or differences between centres."
    )
    level: float = Field(0.95, description="coverage the interval is built for")
    risk_group_change_probability: float = Field(
        ge=0, le=1, description="share of those models that would put this patient in another risk group"
    )
    bootstrap_models: int = Field(description="how many bootstrap models the interval comes from")


class RiskResponse(BaseModel):
    risk: float = Field(ge=0, le=1, description="Probability of severe ICANS (ASTCT grade >= 3), 0-1")
    risk_group: Literal["low", "intermediate", "high"]
    log_odds: float
    uncertainty: Uncertainty | None = Field(
        default=None, description="absent only for models registered without an instability analysis"
    )
    explanation: Explanation
    model: ModelRef
    warnings: list[str]
    request_id: str
    notice: str = Field(default=INTENDED_USE)


class BatchResult(BaseModel):
    results: list[RiskResponse]
    request_id: str
    notice: str = Field(default=INTENDED_USE)


class ErrorItem(BaseModel):
    field: str
    rule: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] | str
    request_id: str | None = None


def batch_request_model(limit: int) -> type[BaseModel]:
    """The batch body, with the configured size limit in its schema."""
    return create_model(
        "BatchRequest",
        __config__=ConfigDict(extra="forbid"),
        patients=(list[PatientFeatures], Field(..., min_length=1, max_length=limit)),  # type: ignore[valid-type]
    )
