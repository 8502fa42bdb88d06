"""What one benchmark run measures (the full and the quick plan) and the fixed places it uses:
127.0.0.1, the repository, the project's virtualenv, the champion's model URI.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
MODEL_URI = "models:/icans-risk@champion"


@dataclass(frozen=True)
class Plan:
    quick: bool
    n_train: int | None  # None: the default cohort (settings.default_cohort_size)
    n_iter: int | None  # None: the default search
    cv_folds: int | None
    calls: int
    bulk_rows: int
    http_seconds: int
    concurrencies: tuple[int, ...]
    workers: tuple[int, ...]
    mlflow_workers: tuple[int, ...]
    rss_requests: int
    batch_sizes: tuple[int, ...]
    batch_seconds: float
    score_rows: int
    cold_starts: int  # spawns of the 1-worker server timed to /readyz (median reported)


SOFT_BUDGET_S = 420  # full mode: past this, optional repeats are skipped so that the run stays < 10 min
FULL = Plan(False, None, None, None, 2000, 100_000, 5, (1, 8, 32), (1, 2), (1, 2), 10_000,
            (100, 1000), 3.0, 100_000, 3)
QUICK = Plan(True, 600, 1, 3, 300, 5_000, 2, (1, 8, 32), (1,), (1,), 500, (100, 1000), 0.5, 5_000, 1)
