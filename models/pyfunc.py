"""The MLflow pyfunc face of a bundle, for MLflow's own tooling (`mlflow models serve`, batch UDFs).

The service does not use it: it loads the bundle directly. Both answer with the same numbers.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc.model import PythonModel

from models.artifact import ModelBundle
from core.features import encode_frame


class IcansRiskPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        ex = self.bundle.explain(encode_frame(pd.DataFrame(model_input)))
        return pd.DataFrame(
            {"risk": ex.risk, "risk_group": self.bundle.risk_group(ex.risk), "log_odds": ex.log_odds}
        )


def model_code_path() -> str:
    """The models-from-code entry file MLflow stores with the model (no pickled Python object)."""
    from pathlib import Path

    return str(Path(__file__).with_name("pyfunc_entry.py"))
