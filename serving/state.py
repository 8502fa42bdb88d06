"""What the service is serving right now, and loading it in the background with retries."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from serving.predictor import Predictor

log = logging.getLogger("icans_risk.serving")


@dataclass
class ModelState:
    predictor: Predictor | None = None
    status: str = "starting"
    error: str | None = None
    attempts: int = 0
    loaded_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def set_ready(self, predictor: Predictor) -> None:
        with self._lock:
            self.predictor = predictor  # one reference swap: requests hold the one they started with
            self.status, self.error, self.loaded_at = "ready", None, time.time()


def load_predictor(settings) -> Predictor:
    """Resolve the configured model URI to a concrete version and load its bundle."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.registry import load_bundle, resolve

    mlflow.set_tracking_uri(settings.tracking_uri)
    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    bundle = load_bundle(resolved, nthread=settings.predictor_threads)
    predictor = Predictor(bundle, resolved)
    _self_check(predictor)
    return predictor


def _self_check(predictor: Predictor) -> None:
    """Refuse a model whose explanation does not add up on the contract's example patient."""
    from pipeline.contract import example_request

    answer = predictor.predict([example_request()])[0]
    total = answer["explanation"]["base_log_odds"] + sum(
        c["log_odds"] for c in answer["explanation"]["contributions"]
    )
    if abs(total - answer["log_odds"]) > 1e-6:
        raise RuntimeError("model self-check failed: explanation does not add up to the log-odds")


def load_in_background(state: ModelState, settings, loader=load_predictor) -> threading.Thread:
    """Load with exponential backoff; /readyz reports the reason while it is not ready."""

    def run() -> None:
        delay = settings.model_load_backoff_s
        for attempt in range(settings.model_load_retries + 1):
            state.attempts = attempt + 1
            state.status = "loading"
            try:
                predictor = loader(settings)
            except Exception as exc:  # reported through /readyz, never to a scoring client
                state.status, state.error = "error", f"{type(exc).__name__}: {exc}"
                log.warning("model load attempt %d failed: %s", attempt + 1, state.error)
                if attempt < settings.model_load_retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 60)
                continue
            state.set_ready(predictor)
            log.info(
                "serving %s v%s (run %s)",
                predictor.model.name,
                predictor.model.version,
                predictor.model.run_id,
            )
            return
        log.error("giving up loading the model after %d attempts", state.attempts)

    thread = threading.Thread(target=run, name="model-loader", daemon=True)
    thread.start()
    return thread
