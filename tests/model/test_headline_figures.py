"""One rounding rule per figure (core.display.DECIMALS): the validated AUROC, calibration slope and
intercept and Brier of one training read the same in its model card, its validation report, the
decision text `icans-risk train` prints, the run's description and the version's description."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from core import display

LABEL = {"auroc": "AUROC", "calibration_slope": "slope", "calibration_intercept": "intercept", "brier": "Brier"}
HEADLINE = tuple(LABEL)


@pytest.fixture(scope="module")
def documents(trained, tmp_path_factory) -> dict[str, str]:
    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    out = tmp_path_factory.mktemp("documents")
    run = client.get_run(result.run_id)
    version = client.get_model_version(result.model_name, result.version)
    return {
        "card": Path(client.download_artifacts(result.run_id, "evidence/model_card.md", str(out))).read_text(),
        "report": Path(client.download_artifacts(result.run_id, "validation_report.html", str(out))).read_text(),
        "decision": "\n".join(result.report_lines()),
        "run description": run.data.tags["mlflow.note.content"],
        "version description": version.description,
    }


@pytest.mark.parametrize("key", HEADLINE)
def test_each_headline_figure_is_printed_identically_everywhere(trained, documents, key):
    v = trained[1].validated
    assert key in v
    point = display.figure(key, v[key])
    for name in ("card", "report"):  # tables headed "(95% CI)"
        assert display.figure_ci(v, key) in documents[name], (name, key)
    for name in ("decision", "run description", "version description"):  # sentences
        assert display.figure_ci(v, key, "95% CI ") in documents[name], (name, key)
    # no finer rounding of the same estimate after its name ("AUROC 0.7422" beside "AUROC 0.742")
    for digits in range(display.decimals(key) + 1, 7):
        finer = re.escape(f"{v[key]:.{digits}f}")
        for name, text in documents.items():
            assert not re.search(rf"{LABEL[key]}[^\d\n]{{0,25}}{finer}(?!\d)", text, re.I), (name, key, finer, point)
