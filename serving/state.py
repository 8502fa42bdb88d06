"""What the service is serving right now: loading it, checking it, and swapping it live.

A request takes the predictor reference once, at its start, and finishes on it; a reload builds
and verifies a new predictor beside the old one and swaps the single reference. A model that
fails to load or to verify is refused and the old one keeps serving.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from models.registry import ResolvedModel
from core.settings import Settings
from serving.predictor import Predictor

log = logging.getLogger("icans_risk.serving")
_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def describe(exc: BaseException) -> str:
    """An error for /readyz, logs and reload answers, without credentials from URLs."""
    return _CREDENTIALS.sub("://***@", f"{type(exc).__name__}: {exc}")


def resolve_current(settings: Settings) -> ResolvedModel:
    """The configured model URI as one concrete version (no mlflow import for a local registry)."""
    from models.registry import resolve_configured

    return resolve_configured(settings.tracking_uri, settings.resolved_model_uri)


def load_predictor(settings: Settings, resolved: ResolvedModel | None = None) -> Predictor:
    """Resolve the configured model URI to a concrete version, load its bundle and verify it."""
    from models.registry import load_bundle

    resolved = resolved or resolve_current(settings)
    bundle = load_bundle(resolved, nthread=settings.predictor_threads)
    predictor = Predictor(bundle, resolved)
    verify(predictor)
    return predictor


def verify(predictor: Predictor) -> None:
    """Refuse a model that cannot answer the stored input example with an explanation that adds up,
    or (with bootstrap models) whose risk for it falls outside its own interval (a calibration that
    does not belong to the trees or to the ensemble)."""
    from core.contract import example_request

    answer = predictor.predict([example_request()])[0]
    total = answer["explanation"]["base_log_odds"] + sum(
        c["log_odds"] for c in answer["explanation"]["contributions"]
    )
    where = f"{predictor.model.name} v{predictor.model.version}"
    if not 0.0 <= answer["risk"] <= 1.0 or abs(total - answer["log_odds"]) > 1e-6:
        raise RuntimeError(f"model verification failed ({where}): the explanation does not add up to the answer")
    unc = answer["uncertainty"]
    if unc is not None and not unc["interval"][0] <= answer["risk"] <= unc["interval"][1]:
        raise RuntimeError(f"model verification failed ({where}): the example's risk is outside its own "
                           "interval (the bundle's calibration and its bootstrap models disagree)")


Loader = Callable[[Settings, ResolvedModel | None], Predictor]  # load_predictor, or a test's stand-in


@dataclass
class ModelState:
    predictor: Predictor | None = None
    status: str = "starting"
    error: str | None = None
    attempts: int = 0
    loaded_at: float | None = None
    last_reload: dict[str, Any] = field(default_factory=dict)
    # where the registry alias pointed when last asked (a reload or the poll), and when: /v1/model and
    # the icans_champion_alias_differs gauge say when that is not the served version
    alias_target: str | None = None
    alias_checked_at: float | None = None
    on_alias: Callable[[str, str | None], None] | None = None
    on_swap: Callable[[Predictor], None] | None = None
    on_reload: Callable[[str], None] | None = None
    _swap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _loader_gave_up: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def ready(self) -> bool:
        return self.predictor is not None

    def set_ready(self, predictor: Predictor) -> None:
        with self._swap_lock:
            self.predictor = predictor  # one reference swap: in-flight requests keep the old one
            self.status, self.error, self.loaded_at = "ready", None, time.time()
        if self.on_alias and self.alias_target is not None:
            self.on_alias(self.alias_target, predictor.model.version)
        if self.on_swap:
            self.on_swap(predictor)

    def stop(self) -> None:
        self._stop.set()

    # -- start-up -----------------------------------------------------------------------------

    def load_in_background(self, settings: Settings, loader: Loader = load_predictor) -> threading.Thread:
        """Load with exponential backoff; /readyz reports the reason while it is not ready."""

        def run() -> None:
            delay = settings.model_load_backoff_s
            attempt = 0
            while not self._stop.is_set():
                attempt += 1
                self.attempts = attempt
                self.status = "loading"
                try:
                    predictor = loader(settings, None)
                except Exception as exc:  # reported through /readyz, never to a scoring client
                    self.status, self.error = "error", describe(exc)
                    log.warning("model load attempt %d failed: %s", attempt, self.error)
                    if attempt == settings.model_load_retries + 1:
                        self._loader_gave_up.set()
                        if settings.reload_interval_s > 0:
                            log.error("model not loaded after %d attempts; the reload poll keeps trying", attempt)
                            return
                        # no poll configured: keep trying once a minute (readyz says why meanwhile)
                        log.error("model not loaded after %d attempts; retrying every 60 s", attempt)
                    self._stop.wait(delay if attempt <= settings.model_load_retries else 60)
                    delay = min(delay * 2, 60)
                    continue
                with self._reload_lock:
                    if self.predictor is not None:  # an admin reload finished first: keep its model
                        return
                    self.set_ready(predictor)
                log.info(
                    "serving %s v%s (run %s)", predictor.model.name, predictor.model.version, predictor.model.run_id
                )
                return

        thread = threading.Thread(target=run, name="model-loader", daemon=True)
        thread.start()
        return thread

    # -- live updates ---------------------------------------------------------------------------

    def reload(
        self,
        settings: Settings,
        loader: Loader = load_predictor,
        resolver: Callable[[Settings], ResolvedModel] = resolve_current,
    ) -> dict[str, Any]:
        """Load the current @champion beside the served model, verify it, swap it in atomically."""
        if not self._reload_lock.acquire(blocking=False):
            return self._record("busy", "another reload is in progress")
        try:
            try:
                resolved = resolver(settings)
            except Exception as exc:
                return self._record("failed", f"registry unreachable or model missing: {describe(exc)}")
            self._saw_alias(resolved.version)
            current = self.predictor
            if current is not None and (current.model.name, current.model.version) == (resolved.name, resolved.version):
                return self._record("unchanged", f"already serving {resolved.name} v{resolved.version}")
            try:
                predictor = loader(settings, resolved)
            except Exception as exc:
                return self._record("failed", f"new model refused, still serving the old one: {describe(exc)}")
            old = current.model.version if current else None
            self.set_ready(predictor)
            return self._record(
                "swapped", f"now serving {predictor.model.name} v{predictor.model.version} (was v{old})"
            )
        finally:
            self._reload_lock.release()

    def poll_in_background(
        self, settings: Settings, interval_s: float, loader: Loader = load_predictor
    ) -> threading.Thread:
        def run() -> None:
            while not self._stop.wait(interval_s):
                if self.predictor is None and not self._loader_gave_up.is_set():
                    continue  # the start-up loader is still retrying
                result = self.reload(settings, loader)
                if result["result"] == "failed":
                    log.warning("reload poll: %s", result["reason"])

        thread = threading.Thread(target=run, name="model-poller", daemon=True)
        thread.start()
        return thread

    def _saw_alias(self, version: str) -> None:
        if self.alias_target != version:
            served = self.predictor.model.version if self.predictor else None
            log.info("the champion alias points to v%s (serving v%s)", version, served)
        self.alias_target, self.alias_checked_at = version, time.time()
        if self.on_alias:
            self.on_alias(version, self.predictor.model.version if self.predictor else None)

    def alias_status(self, alias: str, polling: bool) -> dict[str, Any]:
        """The alias's target as last seen beside the served version, for GET /v1/model."""
        served = self.predictor.model.version if self.predictor else None
        return {
            "alias": alias,
            "serving_version": served,
            "alias_target_version": self.alias_target,
            "checked_at": self.alias_checked_at,
            "differs": self.alias_target is not None and self.alias_target != served,
            "live_reload": polling,
        }

    def _record(self, result: str, reason: str) -> dict[str, Any]:
        self.last_reload = {"result": result, "reason": reason, "at": time.time()}
        level = logging.WARNING if result == "failed" else logging.INFO
        log.log(level, "reload %s: %s", result, reason)
        if self.on_reload:
            self.on_reload(result)
        return dict(self.last_reload)
