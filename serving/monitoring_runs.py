"""The latest monitoring of the served version, as the service shows it (`GET /v1/model`, gauges).

Written by `icans-risk monitor` and by the schedule in `icans-risk serve` (ICANS_MONITOR_INTERVAL_S),
read by the service; the MLflow run named in each row holds the full report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from serving.store import UTCDateTime

JSON_COLUMN = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

monitoring_runs = sa.Table(
    "monitoring_runs",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("summary", JSON_COLUMN, nullable=False),
)

# the figures exported as icans_monitor_<name> gauges
GAUGES = ("n", "n_answers", "n_with_outcome", "alarms", "observed_expected", "calibration_intercept", "calibration_slope",
          "auroc", "brier", "events")


def record(store: Any, model_name: str, model_version: str, run_id: str, summary: dict[str, Any]) -> None:
    with store.engine.begin() as conn:
        conn.execute(monitoring_runs.insert().values(time=datetime.now(UTC), model_name=model_name,
                                                     model_version=str(model_version), run_id=run_id,
                                                     summary=summary))


def latest(store: Any, model_name: str, model_version: str) -> dict[str, Any] | None:
    q = (sa.select(monitoring_runs)
         .where(monitoring_runs.c.model_name == model_name, monitoring_runs.c.model_version == str(model_version))
         .order_by(monitoring_runs.c.id.desc()).limit(1))
    with store.engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        return None
    out = dict(row._mapping)
    return {"time": out["time"].isoformat(timespec="seconds"), "run_id": out["run_id"], **out["summary"]}
