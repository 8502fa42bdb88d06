"""The cohort a command runs on: the named file, or a synthetic cohort written under its hash.

Training and external evaluation read their cohorts the same way; reading validates the file
and raises before anything is logged.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.read import Cohort, read_cohort
from core.settings import Settings


def load_cohort(
    settings: Settings, data: Path | None, outcome: str, on_invalid: str,
    n_patients: int | None = None, seed: int | None = None,
) -> tuple[Cohort, Path, bool]:
    """(cohort, its file, whether it is synthetic). Without a file, a synthetic cohort of
    n_patients (default: the settings' size) drawn with seed (default: the settings' seed)."""
    synthetic = data is None
    if data is None:
        from pipeline.data.synthetic import generate_cohort
        from pipeline.data.write import write_synthetic_cohort

        n = n_patients or settings.default_cohort_size
        seed = settings.seed if seed is None else seed
        data = write_synthetic_cohort(generate_cohort(n, seed), settings.data_dir, n, seed)
    return read_cohort(Path(data), outcome, on_invalid=on_invalid), Path(data), synthetic
