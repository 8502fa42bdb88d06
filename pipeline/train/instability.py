"""How much another development sample of the same size would move each patient's risk.

Riley et al. (BMJ 2025;388:e080749) and Riley & Collins (Biom J 2023) ask that a prediction model
developed on a few hundred patients report its instability: refit the whole model-building process
on B >= 200 bootstrap samples of the development data, and compare each bootstrap model's risk for
every development patient with the final model's (the instability plot), summarised as the mean
absolute prediction error (MAPE) and by how often a patient's risk group would change.

Here what is refitted on each bootstrap sample is LESS than that: the chosen configuration as
shipped, the chosen family with its tuned hyperparameters (not re-tuned and the family not chosen
again: tuning is the costliest step and would multiply training time by B), its Platt calibration on the search's `search_cv_folds`-fold out-of-fold margins of
that sample, and the fit on the whole sample. The B models are kept in the bundle
(`models.ensemble.MarginEnsemble`), so that the service can give every answer the 2.5th-97.5th
percentile range of the B models' risks for that patient.

What the interval is: the spread of the risk that the chosen configuration, refitted on another
sample of this many patients from the same population, would give this patient (part of the
model-development uncertainty). What it is not: a range for the patient's outcome; a confidence
interval for the patient's TRUE risk (by simulation it covers the generator's true risk for 80%,
74% and 48% of patients at 150, 300 and 2,000 development patients, because the model's bias
relative to the truth is not in it: bench/instability.md); it leaves out the variation that
re-tuning and choosing the family again would add (bench/instability_retune.md measures it), the
patient-level variation that no baseline feature measures, and a shift between the development
centre's patients and another centre's.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from joblib import Parallel, delayed

from models.ensemble import MarginEnsemble
from models.linear import LinearEnsemble, LinearExplainer, LinearTerms
from models.trees import FlatTrees, flatten
from pipeline.tracking import progress
from pipeline.train.cluster import jobs, joblib_backend, task
from pipeline.train.validation import Search, fit_configuration
from pipeline.report.model_card import warning_text

if TYPE_CHECKING:
    from models.artifact import ModelBundle
    from core.settings import Settings

# A model card warns when a typical patient's risk moves by this share of the mean risk or more
# across development samples (e.g. MAPE 0.04 at a mean risk of 0.16): the individual risks are then
# too unstable to be read as the patient's own.
MAPE_WARNING_RATIO = 0.25
INTERVAL_MEANING = (
    "95% model-development uncertainty: the 2.5th-97.5th percentiles of the risk that {b} models, "
    "each the chosen configuration refitted (not re-tuned) on a bootstrap sample of the {n} development "
    "patients, give this patient. It is not a confidence interval for the patient's outcome, and it does not cover "
    "unmeasured patient-level effects or differences between centres."
)


@dataclass
class Instability:
    ensemble: MarginEnsemble | LinearEnsemble
    summary: dict[str, Any]
    risks: np.ndarray  # (n, B) bootstrap risks of the development patients
    final_risk: np.ndarray  # (n,) the final model's


def _replicate(kind: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, cv_folds: int, seed: int,
               b: int) -> tuple[FlatTrees | LinearTerms, float, float, int]:
    """The procedure on bootstrap sample b; a sample with fewer than `cv_folds` patients of either
    class (cross-validation impossible) is drawn again, and the redraws are counted."""
    rng = np.random.default_rng([seed, b])
    n, redraws = len(y), 0
    while True:
        idx = rng.integers(0, n, n)
        events = int(y[idx].sum())
        if min(events, n - events) >= cv_folds:
            break
        redraws += 1
    estimator, platt, _ = fit_configuration(kind, params, X[idx], y[idx], cv_folds, seed, 1)
    return compact(kind, estimator), platt.intercept_, platt.slope_, redraws


def compact(kind: str, estimator: Any) -> FlatTrees | LinearTerms:
    """A fitted model as the arrays its ensemble is built from: flattened trees, or a linear model's terms."""
    if kind == LinearExplainer.kind:
        return LinearTerms.from_pipeline(estimator)
    return flatten(kind, estimator.get_booster() if kind == "xgboost" else estimator)


def build_ensemble(models: list[Any], intercepts: Any, slopes: Any) -> MarginEnsemble | LinearEnsemble:
    """The served form of B bootstrap models: compiled tree kernels, or the linear models' stacked terms."""
    if all(isinstance(m, LinearTerms) for m in models):
        return LinearEnsemble.build(models, intercepts, slopes)
    return MarginEnsemble.build(models, intercepts, slopes)


def bootstrap_ensemble(kind: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, n_models: int,
                       cv_folds: int, seed: int, n_jobs: int, cluster: str | None = None,
                       cluster_workers: int = 2) -> tuple[MarginEnsemble | LinearEnsemble, int]:
    """The B bootstrap models of the chosen configuration, compiled; and how many samples were redrawn.
    `cluster`: a Dask cluster to fit them on (`pipeline.train.cluster`; None: joblib's local processes)."""
    with joblib_backend(cluster, cluster_workers) as client:
        replicates = Parallel(n_jobs=jobs(client, n_jobs, n_models), return_as="generator")(  # in order
            delayed(task(_replicate, client))(kind, params, X, y, cv_folds, seed, b) for b in range(n_models)
        )
        out = list(progress.steps(replicates, f"instability: {n_models} bootstrap models", total=n_models))
    trees, intercepts, slopes, redraws = zip(*out)
    return build_ensemble(list(trees), intercepts, slopes), int(sum(redraws))


def summarise(ensemble: MarginEnsemble | LinearEnsemble, X: np.ndarray, final_log_odds: np.ndarray, low: float, high: float,
              n_dev: int) -> Instability:
    """MAPE, interval widths and group changes over the development patients."""
    z = ensemble.margins(X)
    risks = 1 / (1 + np.exp(-z))
    final = 1 / (1 + np.exp(-np.asarray(final_log_odds, dtype=float)))
    ape = np.abs(risks - final[:, None])  # (n, B)
    mape_i = ape.mean(axis=1)
    lo, hi = np.percentile(risks, [2.5, 97.5], axis=1)
    group = (final >= low).astype(int) + (final >= high)
    groups_b = (risks >= low).astype(int) + (risks >= high)
    change_i = (groups_b != group[:, None]).mean(axis=1)
    names = ("low", "intermediate", "high")
    by_group = {
        names[g]: {
            "patients": int((group == g).sum()),
            "mape": float(mape_i[group == g].mean()),
            "group_change": float(change_i[group == g].mean()),
            "median_width": float(np.median((hi - lo)[group == g])),
        }
        for g in range(3) if (group == g).any()
    }
    mape = float(mape_i.mean())
    summary = {
        "models": ensemble.n_models,
        "n_dev": n_dev,
        "mape": mape,
        "mape_p90": float(np.quantile(mape_i, 0.9)),
        "max_ape": float(ape.max()),
        "mean_risk": float(final.mean()),
        "median_interval_width": float(np.median(hi - lo)),
        "group_change": float(change_i.mean()),
        "by_group": by_group,
        "warning": mape >= MAPE_WARNING_RATIO * float(final.mean()),
        "meaning": INTERVAL_MEANING.format(b=ensemble.n_models, n=n_dev),
        "ensemble_mb": round(ensemble.nbytes / 2**20, 2),
    }
    return Instability(ensemble, summary, risks, final)


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The figures logged to MLflow."""
    out = {
        "instability_models": float(summary["models"]),
        "instability_mape": summary["mape"],
        "instability_mape_p90": summary["mape_p90"],
        "instability_median_interval_width": summary["median_interval_width"],
        "instability_group_change": summary["group_change"],
    }
    for g, v in summary["by_group"].items():
        out[f"instability_mape_{g}"] = v["mape"]
        out[f"instability_group_change_{g}"] = v["group_change"]
    return out


def analyse(bundle: ModelBundle, kind: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray,
            settings: Settings, n_jobs: int) -> Instability | None:
    """Refit the configuration on B bootstrap samples of (X, y) and keep the B models in the bundle
    (the service's uncertainty intervals), with the summary in its metadata; None when turned off."""
    if settings.instability_models <= 0:
        print("NOTE: ICANS_INSTABILITY_MODELS=0: no instability analysis, and answers carry no uncertainty interval.")
        return None
    import mlflow

    from pipeline.tracking.liveness import heartbeat

    if mlflow.active_run() is not None:  # a tag without an active run would start a stray run
        heartbeat()
    t0 = time.perf_counter()
    # calibrated on the search's folds, as the served model was (tuning.choose: Search.of(settings).cv_folds)
    ensemble, redraws = bootstrap_ensemble(kind, params, X, y, settings.instability_models,
                                           Search.of(settings).cv_folds, settings.seed, n_jobs, settings.cluster,
                                           settings.cluster_workers)
    inst = summarise(ensemble, X, bundle.explain(X).log_odds, bundle.low_threshold, bundle.high_threshold, len(y))
    inst.summary["redrawn_samples"] = redraws
    inst.summary["seconds"] = round(time.perf_counter() - t0, 1)
    bundle.instability = ensemble
    bundle.metadata["instability"] = inst.summary
    s = inst.summary
    print(f"instability: {s['models']} bootstrap models in {s['seconds']} s: MAPE {s['mape']:.3f} (mean risk "
          f"{s['mean_risk']:.3f}), median 95% interval width {s['median_interval_width']:.3f}, risk group changes "
          f"{s['group_change']:.0%}")
    if s["warning"]:
        print(f"WARNING: {warning_text(s)}")
    return inst


def log_to_mlflow(inst: Instability | None, low: float, high: float, plot: bool = True) -> dict[str, float]:
    """The instability plot as an artifact of the active run (unless the caller logs it); the
    figures to log as its metrics."""
    if inst is None:
        return {}
    if plot:
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(instability_plot(inst, low, high, Path(tmp) / "instability.png")), "plots")
    return {**metrics(inst.summary), "instability_seconds": inst.summary["seconds"]}


def instability_plot(inst: Instability, low: float, high: float, path: Path, max_models: int = 200) -> Path:
    """Riley's instability plot: each bootstrap model's risk against the final model's, per patient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.style import DPI, caption, colour

    risks, final = inst.risks[:, :max_models], inst.final_risk
    fig, ax = plt.subplots(figsize=(6, 5.2))
    xs = np.repeat(final, risks.shape[1])
    ax.scatter(xs, risks.ravel(), s=2, alpha=0.08, color=colour("model"), rasterized=True,
               label=f"{risks.shape[1]} bootstrap models")
    lo, hi = np.percentile(inst.risks, [2.5, 97.5], axis=1)
    order = np.argsort(final)
    ax.plot(final[order], lo[order], color="black", lw=0.8, ls="--", label="2.5th / 97.5th percentile")
    ax.plot(final[order], hi[order], color="black", lw=0.8, ls="--")
    top = float(max(final.max(), inst.risks.max()) * 1.05)
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    for t in (low, high):
        ax.axvline(t, color="grey", lw=0.5, ls=":")
        ax.axhline(t, color="grey", lw=0.5, ls=":")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("risk from the final model")
    ax.set_ylabel("risk from a bootstrap model")
    s = inst.summary
    ax.set_title(f"Prediction instability: MAPE {s['mape']:.3f}, group changes {s['group_change']:.0%}")
    ax.legend(loc="upper left", fontsize=8, markerscale=4)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room under the axis label for the caption (issue 26)
    caption(fig, f"Each development patient's risk from {inst.risks.shape[1]} models refitted on bootstrap samples "
                 "(the chosen configuration refitted, calibration included; not re-tuned). Dotted lines: risk-group "
                 "thresholds.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
