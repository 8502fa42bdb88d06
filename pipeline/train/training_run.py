"""One training run's facts, decided once and handed to every stage.

A training's stages (assessment, evidence, what MLflow records, promotion) need the same dozen
facts: the settings, the outcome, the MLflow run id, the registered model's name, the development
patients as a frame and as the encoded matrix, whether the cohort is synthetic, the parallelism.
`TrainingRun` holds them, so that they are computed once (the matrix is encoded once) and a stage's
signature names what it uses, not what it forwards. `GateVerdict` is the quality gate's answer
that the registered version, the run and the promotion all record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.features import encode_frame
from pipeline.data.read import Cohort
from core.settings import Settings
from pipeline.train.validation import Design


@dataclass
class TrainingRun:
    """What every stage of one training shares (the held-out patients are None under repeated CV)."""

    settings: Settings
    outcome: str
    run_id: str
    model_name: str
    design: Design
    frame: pd.DataFrame  # the development patients (all patients under repeated cross-validation)
    X_dev: np.ndarray
    y_dev: np.ndarray
    test: pd.DataFrame | None
    synthetic: bool
    n_jobs: int
    cohort: Cohort
    data: Path  # the cohort file it read
    on_invalid: str
    empty: list[str] = field(default_factory=list)  # contract features with no value in any row

    @classmethod
    def of(
        cls, settings: Settings, outcome: str, run_id: str, model_name: str, design: Design, dev: pd.DataFrame,
        test: pd.DataFrame | None, synthetic: bool, n_jobs: int, cohort: Cohort, data: Path, on_invalid: str,
        empty: list[str],
    ) -> TrainingRun:
        """The run, with the development matrix encoded here and only here."""
        return cls(settings, outcome, run_id, model_name, design, dev, encode_frame(dev),
                   dev[outcome].astype(int).to_numpy(), test, synthetic, n_jobs, cohort, data, on_invalid, empty)


@dataclass(frozen=True)
class GateVerdict:
    """The quality gate's answer; `ungated`: refused, but served because no champion exists (ALLOW_UNGATED=1)."""

    ok: bool
    reason: str
    ungated: bool = False
