"""How a model's performance is estimated: a held-out split when the data can afford one,
otherwise repeated cross-validation of the whole procedure, with the final model fitted on all.

A held-out set needs about 100 events to estimate AUROC and calibration usefully (Collins et al.
2016; Riley et al. 2021); a centre's 150-500 patients give 8-25 held-out events, and a split then
wastes a quarter of the data on a noisy verdict. Below `split_min_test_events` expected held-out
events the final model is fitted on every patient, and its performance is estimated by
`cv_repeats` x `cv_folds`-fold cross-validation of the WHOLE procedure: in every fold the tree
families and the logistic model are searched again (`n_iter` configurations each,
scored by `search_cv_folds`-fold CV, as the final fit is), the family is chosen again, Platt calibration is fitted
again on out-of-fold margins, and only then are the fold's held-out patients predicted. Every
patient is predicted by a model that never saw them and was tuned without them.

Why not Harrell's optimism bootstrap: for boosted trees it under-corrects. A bootstrap sample
repeats patients, so trees fit those duplicates, and the "test" of each repetition is the
original sample, 63% of which the repetition's model was fitted on. Measured on the generator
(150 patients, fresh 20,000-patient sample as truth): xgboost apparent AUROC 0.855, Harrell
0.767, repeated CV / out-of-bag about 0.70, truth 0.683; an untuned HistGradientBoosting:
Harrell 0.90, truth 0.665. Cross-validation is the documented equivalent the literature allows
(repeated nested CV; Steyerberg, Clinical Prediction Models, 2nd ed., ch. 17) and costs
`cv_repeats * cv_folds` runs of the procedure instead of 200. It estimates a model fitted on
(folds-1)/folds of the patients, so it errs slightly on the pessimistic side.

The interval of each figure (`pooled_interval`): the percentile interval of the patient-bootstrap
replicates of every repeat pooled together, so that it holds both the patient sampling and the
between-repeat spread (which carries the refit variability of the procedure on another split).

What is validated is what is shipped: the final fit and every fold of the outer cross-validation
run the one `Search` (space, configurations, inner folds; each family's library defaults are
always one of the configurations), and the Platt calibration and the risk-group thresholds are
fitted on out-of-fold predictions of a different fold split from the one that chose the
hyperparameters (`CALIBRATION_SPLIT_OFFSET`). A non-positive Platt slope is not replaced by the
raw model: the procedure reports it (`Fitted.platt_refused`) and the gate refuses the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

from models.calibration import PlattOnMargin, risk_of
from models.candidates import (
    CANDIDATES,
    library_defaults,
    make_logistic,
    make_untuned_hist_gradient_boosting,
    search_space,
)
from pipeline.tracking import progress
from pipeline.stats.metrics import auroc, brier, calibration_slope_intercept
# the series keys (the model, the comparators) are the figures' keys: one definition, in core.style
from core.style import FAMILIES, LOGISTIC_MODEL, MODEL, UNTUNED_HGB

SPLIT = "split"
RESAMPLING = "repeated_cv"
METRICS = ("auroc", "calibration_slope", "calibration_intercept", "brier")


class TrainingRefused(ValueError):
    """The cohort cannot support a model; the message is one line that names the reason."""


# From this many events on, two repeats of the cross-validation suffice: the spread of the estimate
# over repeats is small beside its bootstrap interval, and each repeat costs `cv_folds` runs of
# the whole procedure on large data (keeps `make train` on 2,000 patients inside its time target).
FEW_REPEATS_EVENTS = 200


@dataclass(frozen=True)
class Design:
    kind: str  # SPLIT or RESAMPLING
    reason: str
    events: int
    expected_test_events: float
    repeats: int = 0  # repeats of the cross-validation (RESAMPLING only)


def choose_design(events: int, n: int, settings: Any) -> Design:
    """Split only when the held-out part would carry `split_min_test_events` events."""
    expected = events * settings.test_fraction
    need = settings.split_min_test_events
    if settings.validation == SPLIT or (settings.validation == "auto" and expected >= need):
        why = (f"{events} events: a {settings.test_fraction:.0%} held-out split keeps about "
               f"{expected:.0f} events (at least {need} are needed for a split)")
        if settings.validation == SPLIT:
            why = f"split sample chosen by configuration (ICANS_VALIDATION=split); {why}"
        return Design(SPLIT, why, events, expected)
    repeats = settings.cv_repeats if events < FEW_REPEATS_EVENTS else min(settings.cv_repeats, 2)
    why = (f"{events} events in {n} patients: a {settings.test_fraction:.0%} split would keep about "
           f"{expected:.0f} held-out events (fewer than {need}), so the model is fitted on all patients "
           f"and validated by {repeats} x {settings.cv_folds}-fold cross-validation of the whole "
           "procedure (tuning, family choice and calibration inside every fold)")
    if settings.validation == RESAMPLING:
        why = (f"repeated cross-validation chosen by configuration (ICANS_VALIDATION=repeated_cv), {repeats} x "
               f"{settings.cv_folds}-fold; {events} events in {n} patients")
    return Design(RESAMPLING, why, events, expected, repeats)


def check_trainable(y: np.ndarray, outcome: str, min_events: int) -> None:
    events, non_events = int(y.sum()), int(len(y) - y.sum())
    if events < min_events:
        raise TrainingRefused(
            f"{events} events of '{outcome}': at least {min_events} are needed to train; see README "
            "(\"What a cohort needs\")"
        )
    if non_events < min_events:
        raise TrainingRefused(
            f"{non_events} patients without '{outcome}': at least {min_events} are needed to train; see README "
            "(\"What a cohort needs\")"
        )


# --------------------------------------------------------------------------- the procedure


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


# The Platt calibration's out-of-fold split is seeded apart from the search's, so the margins it is
# fitted on (and the thresholds chosen from them) come from folds that did not pick the hyperparameters.
CALIBRATION_SPLIT_OFFSET = 7919


@dataclass(frozen=True)
class Search:
    """The one hyperparameter search, shipped and validated alike: `n_iter` configurations per
    family (the library defaults first, then random draws from the space) scored by
    `cv_folds`-fold cross-validated log-loss; the same `cv_folds` give the calibration's margins."""

    n_iter: int
    cv_folds: int
    families: tuple[str, ...] = FAMILIES  # the families the choice may serve (all are tuned: logistic is the comparator)

    @classmethod
    def of(cls, settings: Any) -> "Search":
        return cls(int(settings.n_iter), int(settings.search_cv_folds), tuple(settings.families))


def search_configurations(name: str, n_events: int, n_iter: int, seed: int) -> list[dict[str, Any]]:
    """The configurations a family's search scores: its library defaults, then `n_iter - 1` distinct
    random draws from its space (shrunk to the number of events), so a tuned model can never lose
    to the untuned one by construction of the space."""
    from sklearn.model_selection import ParameterSampler

    space = search_space(name, n_events)
    grid_size = int(np.prod([len(v) for v in space.values()]))
    defaults = library_defaults(name)
    drawn = [c for c in ParameterSampler(space, n_iter=min(n_iter, grid_size), random_state=seed)
             if any(defaults.get(k, object()) != v for k, v in c.items())]  # a draw equal to the defaults is dropped
    return [defaults] + drawn[: max(n_iter - 1, 0)]


def random_search(
    name: str, n_events: int, cv: StratifiedKFold, n_iter: int, seed: int, n_jobs: int, scoring: Any, refit: bool
) -> GridSearchCV:
    """The one tuning procedure of a family: `search_configurations`, each scored by `cv`."""
    grid = [{k: [v] for k, v in c.items()} for c in search_configurations(name, n_events, n_iter, seed)]
    return GridSearchCV(
        CANDIDATES[name].factory(seed, n_jobs),
        grid,
        scoring=scoring,
        refit=refit,
        cv=cv,
        n_jobs=1,
        error_score="raise",
    )


def tune(name: str, X: np.ndarray, y: np.ndarray, n_iter: int, cv_folds: int, seed: int, n_jobs: int,
         space_events: int | None = None) -> dict[str, Any]:
    """Random search scored by cross-validated log-loss (AUROC recorded beside it). `space_events`:
    the events that choose the search space (default: those of y; a resampling fold passes the whole
    cohort's, so that it validates the procedure that is shipped)."""
    cv = StratifiedKFold(cv_folds, shuffle=True, random_state=seed)
    search = random_search(name, space_events or int(y.sum()), cv, n_iter, seed, n_jobs,
                           scoring={"log_loss": "neg_log_loss", "auroc": "roc_auc"}, refit=False)
    search.fit(X, y)
    res = search.cv_results_
    best = int(np.argmax(res["mean_test_log_loss"]))
    return {
        "params": res["params"][best],
        "cv_log_loss": float(-res["mean_test_log_loss"][best]),
        "cv_log_loss_std": float(res["std_test_log_loss"][best]),
        "cv_auroc": float(res["mean_test_auroc"][best]),
        "n_configs": len(res["params"]),
    }


@dataclass
class Fitted:
    """One run of the procedure: the chosen family, fitted on all of X, and its Platt calibration.

    `platt_refused`: the Platt slope fitted on the out-of-fold margins was not positive (the
    model's ranking carries no usable signal); the calibration then is the identity and the gate
    refuses the model (`pipeline.train.gate.quality_gate`) instead of serving the raw margins."""

    chosen: str
    params: dict[str, Any]
    estimator: Any
    platt: PlattOnMargin
    oof_risk: np.ndarray  # calibrated out-of-fold risks of the patients it was fitted on
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)
    platt_refused: bool = False
    fitted_platt_slope: float = float("nan")

    def predict(self, X: np.ndarray) -> np.ndarray:
        margin = _logit(self.estimator.predict_proba(X)[:, 1])
        return risk_of(self.platt.transform(margin))


def fit_procedure(
    X: np.ndarray,
    y: np.ndarray,
    tuned: dict[str, dict[str, Any]],
    cv_folds: int,
    seed: int,
    n_jobs: int,
    families: tuple[str, ...] = FAMILIES,
) -> Fitted:
    """Choose the family with the lowest CV log-loss (every family, the logistic one included, on the
    same out-of-fold criterion), calibrate it on out-of-fold margins (never on the patients a margin
    was fitted on), then fit it on all of X."""
    chosen = min((n for n in tuned if n in families), key=lambda n: tuned[n]["cv_log_loss"])
    estimator, platt, oof = fit_configuration(chosen, tuned[chosen]["params"], X, y, cv_folds, seed, n_jobs)
    oof_risk = risk_of(platt.transform(_logit(oof)))
    slope = platt_slope_of(oof, y)
    return Fitted(chosen, tuned[chosen]["params"], estimator, platt, oof_risk, tuned,
                  platt_refused=not (np.isfinite(slope) and slope > 0), fitted_platt_slope=slope)


def platt_slope_of(oof: np.ndarray, y: np.ndarray) -> float:
    """The unpenalised Platt slope of out-of-fold probabilities (before any fallback): the figure
    that says whether the margins rank patients the right way round at all."""
    from pipeline.stats.metrics import calibration_slope_intercept

    return float(calibration_slope_intercept(y, np.clip(oof, 1e-7, 1 - 1e-7))[0])


def fit_configuration(kind: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, cv_folds: int, seed: int,
                      n_jobs: int) -> tuple[Any, PlattOnMargin, np.ndarray]:
    """The procedure once the configuration is chosen: the family with these parameters, Platt
    calibration on its `cv_folds`-fold out-of-fold margins, then the fit on all of X. Returns the
    fitted estimator, the calibration and the out-of-fold probabilities. Training, every bootstrap
    model of the instability analysis and a local revision all run this one procedure."""
    model = CANDIDATES[kind].factory(seed, n_jobs).set_params(**params)
    # another split than the search's (seeded `seed`): these margins did not choose the hyperparameters
    cv = StratifiedKFold(cv_folds, shuffle=True, random_state=seed + CALIBRATION_SPLIT_OFFSET)
    oof = cross_val_predict(clone(model), X, y, cv=cv, method="predict_proba")[:, 1]
    platt = PlattOnMargin().fit(_logit(oof), y)
    return clone(model).fit(X, y), platt, oof


# --------------------------------------------------------------------------- repeated cross-validation


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    slope, intercept = calibration_slope_intercept(y, p)
    return {"auroc": auroc(y, p), "calibration_slope": slope, "calibration_intercept": intercept,
            "brier": brier(y, p)}


# Sensitivity kept above the low threshold, specificity kept above the high threshold.
LOW_GROUP_SENSITIVITY = 0.90
HIGH_GROUP_SPECIFICITY = 0.90


def choose_thresholds(y: np.ndarray, risk: np.ndarray) -> tuple[float, float]:
    """Risk-group cut-offs from development (out-of-fold) risks only.

    low: below it lie at most 10% of the events (a "low" answer misses few events);
    high: at or above it lie at most 10% of the non-events (a "high" answer is specific).
    """
    events = np.sort(risk[y == 1])
    non_events = np.sort(risk[y == 0])
    low = float(np.quantile(events, 1 - LOW_GROUP_SENSITIVITY)) if len(events) else 0.5
    high = float(np.quantile(non_events, HIGH_GROUP_SPECIFICITY)) if len(non_events) else 0.5
    if high <= low:
        low = high
    return round(low, 4), round(high, 4)


@dataclass
class FoldRun:
    """One run of the procedure on a fold's training patients: its predictors, the risk-group
    thresholds it chose on its own out-of-fold risks, and whether its Platt slope was refused."""

    models: dict[str, Callable[[np.ndarray], np.ndarray]]
    thresholds: tuple[float, float]
    platt_refused: bool


@dataclass(frozen=True)
class Procedure:
    """The whole modelling procedure as each resampling fold re-runs it (picklable, so folds run
    in worker processes): the shipped `Search` of both tree families and the logistic model,
    the family chosen by cross-validated log-loss, Platt calibration on out-of-fold margins of
    another split, thresholds from those risks, the fit; and the untuned HistGradientBoosting
    comparator beside it."""

    n_iter: int
    cv_folds: int
    space_events: int | None = None  # the whole cohort's events: the search space the final model had
    families: tuple[str, ...] = FAMILIES  # the families the choice may serve (`Search.families`)

    @property
    def search(self) -> Search:
        return Search(self.n_iter, self.cv_folds, self.families)

    def run(self, X: np.ndarray, y: np.ndarray, seed: int) -> FoldRun:
        tuned = {name: tune(name, X, y, self.n_iter, self.cv_folds, seed, 1, self.space_events)
                 for name in CANDIDATES}
        fitted = fit_procedure(X, y, tuned, self.cv_folds, seed, 1, self.families)
        hgb = make_untuned_hist_gradient_boosting(seed).fit(X, y)
        logistic = make_logistic(seed).set_params(**tuned[LOGISTIC_MODEL]["params"]).fit(X, y)
        models: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            MODEL: fitted.predict,
            UNTUNED_HGB: lambda Z: hgb.predict_proba(Z)[:, 1],
            LOGISTIC_MODEL: lambda Z: logistic.predict_proba(Z)[:, 1],
        }
        return FoldRun(models, choose_thresholds(y, fitted.oof_risk), fitted.platt_refused)

    def __call__(self, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        return self.run(X, y, seed).models


FoldOut = tuple[int, np.ndarray, dict[str, np.ndarray], tuple[float, float], bool]


def _run_folds(X: np.ndarray, y: np.ndarray, procedure: Procedure,
               tasks: list[tuple[int, int, np.ndarray, np.ndarray]]) -> list[FoldOut]:
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1):
        for repeat, seed, train_idx, test_idx in tasks:
            run = procedure.run(X[train_idx], y[train_idx], seed)
            out.append((repeat, test_idx, {name: predict(X[test_idx]) for name, predict in run.models.items()},
                        run.thresholds, run.platt_refused))
    return out


def outer_splits(y: np.ndarray, repeats: int, folds: int, seed: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(repeat, fold seed, training indices, test indices) of the repeated cross-validation: the
    one place that draws the outer folds, so a champion's configuration can be refitted in
    exactly the folds the challenger was validated in."""
    tasks = []
    for r in range(repeats):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + 1000 * (r + 1))
        for k, (tr, te) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
            tasks.append((r, seed + 1000 * (r + 1) + k, tr, te))
    return tasks


@dataclass
class Resampled:
    """Repeated cross-validation of the whole procedure: `predictions[name]` has one row per
    repeat, each a full set of out-of-fold risks (every patient predicted by a model that never
    saw them, tuned without them)."""

    repeats: int
    folds: int
    predictions: dict[str, np.ndarray]
    per_repeat: dict[str, dict[str, np.ndarray]]
    apparent: dict[str, dict[str, float]]
    seconds: float
    # (repeats, n, 2): the low and high thresholds each patient was classified with, chosen inside
    # the fold that predicted them (never on the patient's own outcome)
    fold_thresholds: np.ndarray | None = None
    platt_refused_folds: int = 0
    seeds: tuple[int, ...] = ()  # the outer splits' base seed and repeats (for `outer_splits`)

    def estimate(self, name: str = MODEL) -> dict[str, float]:
        return {k: float(np.nanmean(self.per_repeat[name][k])) for k in METRICS}

    def spread(self, name: str = MODEL) -> dict[str, float]:
        """Standard deviation over repeats: how much the estimate depends on the fold split."""
        return {k: float(np.nanstd(self.per_repeat[name][k], ddof=1)) if self.repeats > 1 else float("nan")
                for k in METRICS}

    def optimism(self, name: str = MODEL) -> dict[str, float]:
        """Apparent minus cross-validated: what fitting on the same patients adds."""
        est = self.estimate(name)
        return {k: self.apparent[name][k] - est[k] for k in METRICS}

    def to_dict(self) -> dict[str, Any]:
        names = list(self.per_repeat)
        return {"repeats": self.repeats, "folds": self.folds, "seconds": self.seconds,
                "apparent": self.apparent, "cross_validated": {n: self.estimate(n) for n in names},
                "spread_over_repeats": {n: self.spread(n) for n in names},
                "optimism": {n: self.optimism(n) for n in names}}


def repeated_cv(
    X: np.ndarray,
    y: np.ndarray,
    procedure: Procedure,
    apparent: dict[str, np.ndarray],
    repeats: int,
    folds: int,
    seed: int,
    n_jobs: int,
    cluster: str | None = None,
    cluster_workers: int = 2,
) -> Resampled:
    """`repeats` x `folds`-fold stratified cross-validation of `procedure`; `apparent`: each model's
    predictions on X from its fit on all of X (for the optimism figure). `cluster`: a Dask cluster
    to run the folds on (`pipeline.train.cluster`; None: joblib's local processes)."""
    from joblib import Parallel, delayed

    from pipeline.train.cluster import jobs, joblib_backend, task as on_cluster

    started = time.perf_counter()
    tasks = outer_splits(y, repeats, folds, seed)
    label = f"validation: {repeats} x {folds}-fold cross-validation of the whole procedure"
    with joblib_backend(cluster, cluster_workers) as client:
        n_jobs = jobs(client, n_jobs, len(tasks))
        if n_jobs == 1:
            done = [d for task in progress.steps(tasks, label) for d in _run_folds(X, y, procedure, [task])]
        else:  # one task per fold (each seeded by its task, so the same results), reported as each ends
            parts = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(on_cluster(_run_folds, client))(X, y, procedure, [task]) for task in tasks)
            done = [d for part in progress.steps(parts, label, total=len(tasks)) for d in part]
    names = list(done[0][2])
    predictions = {name: np.full((repeats, len(y)), np.nan) for name in names}
    fold_thresholds = np.full((repeats, len(y), 2), np.nan)
    for repeat, test_idx, preds, thresholds, _ in done:
        for name, p in preds.items():
            predictions[name][repeat, test_idx] = p
        fold_thresholds[repeat, test_idx] = thresholds
    per_repeat = {name: {k: np.array([scores(y, predictions[name][r])[k] for r in range(repeats)]) for k in METRICS}
                  for name in names}
    app = {name: scores(y, apparent[name]) for name in names if name in apparent}
    return Resampled(repeats, folds, predictions, per_repeat, app, time.perf_counter() - started,
                     fold_thresholds, sum(int(d[4]) for d in done), (seed, repeats))
