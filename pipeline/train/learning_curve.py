"""The learning curve: held-out AUROC against training size on the synthetic generator, each size
fitted by the training's own procedure, with the oracle AUROC as the ceiling (its summary:
`pipeline.evidence.training_size`)."""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import pandas as pd

from core.contract import DEFAULT_OUTCOME, ORACLE_COLUMN
from pipeline.evidence.names import ORACLE
from pipeline.stats.metrics import auroc


LEARNING_CURVE_SIZES = (100, 150, 250, 500, 1000, 2000)


# The procedure each size is fitted with: the training's own (search of every family, family
# choice, Platt calibration), at the per-fold budget of repeated cross-validation.
LEARNING_CURVE_N_ITER = 4


LEARNING_CURVE_CV_FOLDS = 3


FitAndScore = Callable[[pd.DataFrame, pd.DataFrame], Mapping[str, float]]


def default_fit_and_score(train_df: pd.DataFrame, test_df: pd.DataFrame, outcome: str = DEFAULT_OUTCOME,
                          seed: int = 0) -> dict[str, float]:
    """Held-out AUROC of: the tuned, calibrated model (the training procedure,
    `pipeline.train.validation.Procedure`), an untuned scikit-learn HistGradientBoosting, the tuned
    logistic comparator, and the raw EASIX and m-EASIX scores (not trained: their AUROC does not
    depend on the training size)."""
    from models.baselines import SCORES
    from core.features import encode_frame
    from pipeline.train.validation import LOGISTIC_MODEL, MODEL, UNTUNED_HGB, Procedure

    X_train, X_test = encode_frame(train_df), encode_frame(test_df)
    y_train = train_df[outcome].astype(int).to_numpy()
    y_test = test_df[outcome].astype(int).to_numpy()
    models = Procedure(LEARNING_CURVE_N_ITER, LEARNING_CURVE_CV_FOLDS)(X_train, y_train, seed)
    out = {"tuned model": auroc(y_test, models[MODEL](X_test)),
           "untuned HGB": auroc(y_test, models[UNTUNED_HGB](X_test)),
           "logistic": auroc(y_test, models[LOGISTIC_MODEL](X_test))}
    for name, score in SCORES.items():
        out[name] = auroc(y_test, score(test_df))
    return out


def learning_curve(
    sizes: Sequence[int] = LEARNING_CURVE_SIZES,
    seed: int = 0,
    fit_and_score: FitAndScore | None = None,
    generator: Callable[[int, int], pd.DataFrame] | None = None,
    test_size: int = 2000,
    outcome: str = DEFAULT_OUTCOME,
    repeats: int = 1,
) -> pd.DataFrame:
    """Held-out AUROC against training size on synthetic data, with the oracle as the ceiling.

    One fixed synthetic test set (`generator(test_size, seed + 100_000)`); for each size (and
    repeat r) an independent training cohort `generator(size, seed + 1 + i + 1000 r)` is fitted once
    by `fit_and_score(train_df, test_df) -> {name: auroc}` (default `default_fit_and_score`).
    A single draw per size is noisy at 250-500 patients; `repeats` > 1 averages independent draws.
    The oracle row is the AUROC of the true risk (`ORACLE_COLUMN`) on the test set: the ceiling for
    any model. On this generator the true risk contains a latent random effect that no feature
    carries, so the ceiling reachable from the features is lower still.

    Returns a tidy table: size, repeat, events_train, model, auroc, seconds (fit + score time).
    """
    if generator is None:
        from pipeline.data.synthetic import generate_cohort

        generator = generate_cohort
    if fit_and_score is None:
        def fit_and_score(tr: pd.DataFrame, te: pd.DataFrame) -> Mapping[str, float]:
            return default_fit_and_score(tr, te, outcome=outcome, seed=seed)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    test_df = generator(test_size, seed + 100_000)
    y_test = test_df[outcome].astype(int).to_numpy()
    oracle = auroc(y_test, test_df[ORACLE_COLUMN].to_numpy(float)) if ORACLE_COLUMN in test_df else float("nan")
    rows = []
    for r in range(repeats):
        for i, size in enumerate(sizes):
            train_df = generator(int(size), seed + 1 + i + 1000 * r)
            started = time.perf_counter()
            scores = fit_and_score(train_df, test_df)
            seconds = time.perf_counter() - started
            events = int(train_df[outcome].astype(int).sum())
            common = {"size": int(size), "repeat": r, "events_train": events}
            for name, value in scores.items():
                rows.append({**common, "model": name, "auroc": float(value), "seconds": seconds})
            rows.append({**common, "model": ORACLE, "auroc": oracle, "seconds": 0.0})
    return pd.DataFrame(rows)
