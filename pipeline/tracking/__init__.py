"""MLflow runs (setup, inputs, bundle versions) and their liveness (no run left lying)."""
