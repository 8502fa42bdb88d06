"""The service shows the champion alias moving: /v1/model and a gauge say when it serves another version."""

from __future__ import annotations

import mlflow
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from serving.app import create_app
from tests.helpers import wait_ready


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_model_info_and_gauge_say_when_the_alias_points_elsewhere(trained, tokens):
    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    name = result.model_name
    original = client.get_model_version_by_alias(name, "champion")
    admin, score = _bearer(tokens["admin"]), _bearer(tokens["score"])
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        before = c.get("/v1/model", headers=score).json()["champion_alias"]
        assert before["serving_version"] == str(original.version) and before["differs"] is False
        try:
            # a promoted version the service refuses to load: it keeps serving the old one, and says so
            broken = client.create_model_version(name, source="file:///nonexistent/model", run_id=original.run_id)
            client.set_registered_model_alias(name, "champion", broken.version)
            assert c.post("/v1/admin/reload", headers=admin).json()["result"] == "failed"
            alias = c.get("/v1/model", headers=score).json()["champion_alias"]
            assert alias["alias_target_version"] == str(broken.version)
            assert alias["serving_version"] == str(original.version)
            assert alias["differs"] is True and alias["checked_at"] is not None
            assert "icans_champion_alias_differs 1.0" in c.get("/metrics").text
        finally:
            client.set_registered_model_alias(name, "champion", original.version)
        assert c.post("/v1/admin/reload", headers=admin).json()["result"] == "unchanged"
        assert c.get("/v1/model", headers=score).json()["champion_alias"]["differs"] is False
        assert "icans_champion_alias_differs 0.0" in c.get("/metrics").text
