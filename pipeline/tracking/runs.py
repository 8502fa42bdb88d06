"""MLflow plumbing shared by training, evaluation, updating and monitoring.

The experiment (created where the settings say its artifacts go), the commit a run records,
the registered pyfunc model (signature, input example, pinned requirements) and the inputs a
run records about its data (a dataset's schema and digest, never its rows).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from core.contract import FEATURE_NAMES, FEATURES
from pipeline.data.read import Cohort
from models.registry import BUNDLE_ARTIFACT
from core.settings import Settings

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# MLflow 3's UI opens an experiment on its GenAI view (traces, token usage) unless the experiment's
# kind says otherwise; `custom_model_development` is the kind it gives classic training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
EXPERIMENT_DESCRIPTIONS = {
    "icans-risk": "Training and local-update runs of the ICANS risk model: one run per `icans-risk train` or "
    "`update`. Headline metrics: validated_auroc, validated_calibration_slope, validated_brier "
    "(the design, held-out or repeated cross-validation, is the run's tag validation_design). Research use only.",
    "icans-risk-evaluation": "`icans-risk evaluate` runs: the champion re-scored on a given cohort. Research use only.",
    "icans-risk-monitoring": "`icans-risk monitor` runs: drift of the served version's audited answers against its "
    "development data. Research use only.",
}


def setup_mlflow(settings: Settings, experiment: str) -> str:
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        describe_experiment(client, exp.experiment_id, exp.name, exp.tags)
        return exp.experiment_id
    # A tracking server decides where artifacts go (with --serve-artifacts: mlflow-artifacts:/<id>,
    # proxied to its --artifacts-destination) unless ICANS_ARTIFACT_ROOT is set explicitly.
    remote = settings.tracking_uri.startswith(("http://", "https://"))
    location = (
        None
        if remote and "artifact_root" not in settings.model_fields_set
        else f"{settings.artifact_root.rstrip('/')}/{experiment}"
    )
    try:
        return client.create_experiment(experiment, artifact_location=location, tags=experiment_tags(experiment))
    except MlflowException as exc:  # another training created it between the lookup and here
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        existing = client.get_experiment_by_name(experiment)
        assert existing is not None  # creating it has just failed because it exists
        return existing.experiment_id


def experiment_tags(experiment: str) -> dict[str, str]:
    """The classic (training runs) view, and a description the UI shows above the runs."""
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    if experiment in EXPERIMENT_DESCRIPTIONS:
        tags["mlflow.note.content"] = EXPERIMENT_DESCRIPTIONS[experiment]
    return tags


def describe_experiment(client: MlflowClient, experiment_id: str, name: str, current: dict[str, str]) -> None:
    """Sets the tags an experiment created before they existed lacks; never overwrites one a user set."""
    for key, value in experiment_tags(name).items():
        if key not in current:
            client.set_experiment_tag(experiment_id, key, value)


REGISTERED_MODEL_DESCRIPTION = (
    "Risk of {outcome} after CAR T-cell therapy from baseline values (data contract v{contract}). "
    "The alias @champion is the version the service answers with; each version's description gives its "
    "validation design and headline figures, and its artifact model_card.html the full evidence. "
    "Research use only: not a medical device."
)


def describe_registered_model(client: MlflowClient, model_name: str) -> None:
    """The registered model's description, when it has none (a description a user wrote stays)."""
    from core.contract import CONTRACT_VERSION, OUTCOMES

    model = client.get_registered_model(model_name)
    if model.description:
        return
    outcome = next((o.description for o in OUTCOMES.values() if o.registered_model == model_name), model_name)
    client.update_registered_model(
        model_name, description=REGISTERED_MODEL_DESCRIPTION.format(outcome=outcome, contract=CONTRACT_VERSION)
    )


def model_signature() -> ModelSignature:
    kinds = {"float": "double", "bool": "boolean", "category": "string"}
    inputs = Schema([ColSpec(kinds[f.kind], f.name, required=f.required) for f in FEATURES])
    outputs = Schema(
        [ColSpec("double", "risk"), ColSpec("string", "risk_group"), ColSpec("double", "log_odds")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """The contract's example patient (never a real row: no patient data goes to MLflow)."""
    record = {f.name: f.example for f in FEATURES}
    return pd.DataFrame([record]).astype({f.name: float for f in FEATURES if f.kind == "float"})


def log_bundle_version(bundle_dir: Path, model_name: str) -> str:
    """Log a bundle directory as the active run's pyfunc model and register it; returns the version."""
    from models.pyfunc import model_code_path

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=model_code_path(),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=model_signature(),
        input_example=input_example(),
        registered_model_name=model_name,
        pip_requirements=pip_requirements(),
    )
    version = str(info.registered_model_version)
    describe_registered_model(MlflowClient(), model_name)
    from models.registry import record_digests  # every file's sha256, checked at each load

    record_digests(MlflowClient(), model_name, version, bundle_dir)
    log_versioned_card(bundle_dir, version)
    return version


def log_versioned_card(bundle_dir: Path, version: str) -> None:
    """The run's evidence/model_card.{md,html} again, now naming the registered version (the copy in
    the registered model was written before the registry numbered it; the service names it when served)."""
    from pipeline.report.model_card import MODEL_CARD_HTML, MODEL_CARD_MD, with_version

    run = mlflow.active_run()
    if run is None or not (bundle_dir / MODEL_CARD_HTML).exists():
        return
    logged = {Path(a.path).name for a in MlflowClient().list_artifacts(run.info.run_id, "evidence")}
    if MODEL_CARD_HTML not in logged:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in (MODEL_CARD_MD, MODEL_CARD_HTML):
            if (bundle_dir / name).exists():
                text = (bundle_dir / name).read_text(encoding="utf-8")
                (Path(tmp) / name).write_text(with_version(text, version), encoding="utf-8")
        mlflow.log_artifacts(tmp, artifact_path="evidence")


def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy", "pandas", "scikit-learn", "xgboost", "shap", "pandera", "pydantic"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def log_quarantine(cohort: Cohort) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rejected_rows.csv"
        cohort.rejected.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="quarantine")
    mlflow.set_tag("quarantine", "quarantine/rejected_rows.csv")


def log_dataset(frame: pd.DataFrame, outcome: str, source: str, context: str, name: str) -> None:
    """The cohort as an MLflow dataset input: its schema, size and digest, never its rows."""
    from mlflow.data.pandas_dataset import from_pandas  # what mlflow.data.from_pandas is, under a name mypy sees

    columns = [c for c in (*FEATURE_NAMES, outcome) if c in frame]
    try:
        with warnings.catch_warnings():  # mlflow's "source can be interpreted in multiple ways" on a file name
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame[columns], source=source, targets=outcome, name=name)
        mlflow.log_input(dataset, context=context)
    except Exception as exc:  # the Datasets panel is a convenience; never fail a training on it
        log.warning("dataset input not logged: %s", exc)
