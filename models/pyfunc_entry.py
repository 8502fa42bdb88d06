"""MLflow models-from-code entry point: stored with each logged model, run when it is loaded."""

import mlflow.models

from models.pyfunc import IcansRiskPyfunc

mlflow.models.set_model(IcansRiskPyfunc())
