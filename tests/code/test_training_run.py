"""One object per training run, and one question "is there a champion?" under the promotion lock."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame
from pipeline.train.training_run import GateVerdict, TrainingRun
from pipeline.train.validation import Design
from tests.helpers import make_settings


def test_the_run_encodes_the_development_matrix_once(tmp_path: Path) -> None:
    dev = generate_cohort(80, seed=3)
    run = TrainingRun.of(make_settings(tmp_path), "severe_icans", "r1", "icans-risk", Design("split", "x", 10, 5.0), dev, None,
                         False, 1, None, tmp_path / "c.csv", "refuse", [])  # type: ignore[arg-type]
    np.testing.assert_array_equal(run.X_dev, encode_frame(dev))
    np.testing.assert_array_equal(run.y_dev, dev["severe_icans"].astype(int).to_numpy())
    assert run.frame is dev and run.test is None


class _Client:
    """The registry calls promotion makes, recorded."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.alias: str | None = None

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags[key] = value

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.alias = version


def _promote(monkeypatch, tmp_path: Path, gate: GateVerdict, champion: Any, **settings: Any):
    import pipeline.train.promote as promotion

    asked: list[str] = []

    def champion_of(client: Any, name: str, alias: str) -> Any:
        asked.append(name)
        return champion

    monkeypatch.setattr(promotion, "champion", champion_of)
    monkeypatch.setattr(promotion, "promotion_lock", lambda *a, **k: nullcontext())
    monkeypatch.setattr(promotion, "reconcile_tags", lambda *a, **k: None)
    client = _Client()
    verdict = promotion.promote_if_allowed(client, make_settings(tmp_path, **settings), "icans-risk", "2", gate,
                                           lambda champ: {}, 0.8)  # type: ignore[arg-type]
    return verdict, client, asked


def test_a_passed_gate_without_a_champion_asks_once_and_promotes(monkeypatch, tmp_path: Path) -> None:
    verdict, client, asked = _promote(monkeypatch, tmp_path, GateVerdict(True, ""), None)
    assert asked == ["icans-risk"] and verdict.promoted and verdict.reason == "no champion yet"
    assert client.alias == "2" and client.tags["promotion"] == "champion"


def test_a_refused_gate_asks_once_and_says_how_to_proceed(monkeypatch, tmp_path: Path) -> None:
    verdict, client, asked = _promote(monkeypatch, tmp_path, GateVerdict(False, "too small"), None)
    assert asked == ["icans-risk"] and not verdict.promoted and "ALLOW_UNGATED=1" in verdict.reason
    assert client.alias is None and client.tags["promotion_reason"] == verdict.reason


def test_an_ungated_model_is_served_only_without_a_champion(monkeypatch, tmp_path: Path) -> None:
    verdict, client, asked = _promote(monkeypatch, tmp_path, GateVerdict(False, "too small", ungated=True), None,
                                      allow_ungated=True)
    assert asked == ["icans-risk"] and verdict.promoted
    assert verdict.reason == "UNGATED (quality gate: too small; ALLOW_UNGATED=1): no champion yet"
    assert client.tags["promotion_reason"] == verdict.reason  # one writer of the version's promotion tags

    class Champion:
        version = "1"

    verdict, client, asked = _promote(monkeypatch, tmp_path, GateVerdict(False, "too small", ungated=True),
                                      Champion(), allow_ungated=True)
    assert asked == ["icans-risk"] and not verdict.promoted and "applies only while no champion exists" in verdict.reason
