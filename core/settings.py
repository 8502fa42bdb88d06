"""One typed settings object, read from the environment when a command or the app starts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.contract import DEFAULT_OUTCOME, OUTCOMES
from core.style import FAMILIES


def _default_tracking_uri() -> str:
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').as_posix()}"


def _default_artifact_root() -> str:
    return (Path.cwd() / "mlartifacts").as_uri()


def _default_store_url() -> str:
    return f"sqlite:///{(Path.cwd() / 'icans-service.db').as_posix()}"


DEV_AUDIT_KEY = "development-only-audit-key"


class Settings(BaseSettings):
    """Everything configurable. Environment variables use the ICANS_ prefix, except MLflow's own."""

    model_config = SettingsConfigDict(env_prefix="ICANS_", extra="ignore", validate_by_name=True)

    env: Literal["development", "production"] = "development"

    # MLflow: the system of record. SQLite + local artifacts are the embedded defaults.
    tracking_uri: str = Field(
        default_factory=_default_tracking_uri,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "ICANS_TRACKING_URI"),
    )
    artifact_root: str = Field(default_factory=_default_artifact_root)
    experiment: str = "icans-risk"
    evaluation_experiment: str = "icans-risk-evaluation"
    outcome: str = DEFAULT_OUTCOME
    champion_alias: str = "champion"
    # Where trainings serialise "compare with the champion, move the alias": a PostgreSQL URL every
    # trainer reaches (with a remote tracking server the default is a file lock on one host).
    lock_url: str | None = None
    model_uri: str | None = None  # ICANS_MODEL_URI; default models:/<name>@champion

    # Serving
    host: str = "127.0.0.1"
    port: int = 8000
    batch_limit: int = Field(default=1000, ge=1, le=100_000)
    model_load_retries: int = Field(default=5, ge=0)
    model_load_backoff_s: float = Field(default=1.0, ge=0)
    predictor_threads: int = Field(default=1, ge=1)
    reload_interval_s: float = Field(default=0.0, ge=0, description="poll @champion; 0 = off")
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)  # closed unless listed
    access_log: bool = False
    # Limits at the edge (serving/http_guard.py; `icans-risk serve`): request line, request head
    # (line + header fields) and field count; time to receive the head and the body; connections
    # per worker (uvicorn's limit_concurrency, 503 beyond it) and idle keep-alive.
    http_max_request_line: int = Field(default=8 * 1024, ge=256)
    http_max_head_bytes: int = Field(default=32 * 1024, ge=1024)
    http_max_headers: int = Field(default=100, ge=8)
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    http_limit_concurrency: int = Field(default=512, ge=1)
    http_timeout_keep_alive_s: int = Field(default=5, ge=1)

    # Access control and audit trail
    auth: Literal["on", "off"] = "on"
    store_url: str = Field(default_factory=_default_store_url)
    audit_hmac_key: SecretStr = SecretStr(DEV_AUDIT_KEY)
    key_cache_ttl_s: float = Field(default=2.0, ge=0)
    # When an answer leaves, its audit record is committed. "full": also flushed to disk (survives
    # power loss; each answer waits for an fsync, ~3-9 ms on a virtual disk). "normal": committed
    # to the database but the OS flushes it (survives a crash of this service; the last moments
    # can be lost on power loss): SQLite WAL synchronous=NORMAL, PostgreSQL synchronous_commit=off.
    # It covers all of the service's writes; the key-management CLI always uses "full".
    audit_sync: Literal["full", "normal"] = "full"
    # How long an answer waits for its audit record (then 503, and the record is never written),
    # and how long the store may wait for a lock before giving up (SQLite busy timeout, PostgreSQL
    # lock_timeout / statement_timeout): at most a quarter of the first, so the database always
    # gives up before the caller does.
    audit_timeout_s: float = Field(default=10.0, gt=0, le=300)
    store_timeout_s: float = Field(default=2.0, gt=0, le=60)
    audit_probe_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Training
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "data")
    default_cohort_size: int = 2000
    seed: int = 42
    # The one hyperparameter search (pipeline.train.validation.Search), shipped and validated alike: the
    # final fit and every fold of the outer cross-validation score n_iter configurations per family
    # (the library defaults first) by search_cv_folds-fold log-loss; Platt calibration and the
    # thresholds use search_cv_folds folds of another split. cv_folds: the outer cross-validation's.
    n_iter: int = Field(default=4, ge=1, description="search configurations per family (library defaults included)")
    search_cv_folds: int = Field(
        default=3, ge=2, validation_alias=AliasChoices("search_cv_folds", "ICANS_SEARCH_CV_FOLDS", "resample_cv_folds", "ICANS_RESAMPLE_CV_FOLDS"),
        description="inner folds of the search and of the Platt calibration",
    )
    cv_folds: int = Field(default=5, ge=2)
    # The families the family choice may serve (ICANS_FAMILIES='["xgboost"]'); every family is still
    # tuned, the logistic one being the gate's comparator. Chosen by cross-validated log-loss.
    families: list[str] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    instability_models: int = Field(
        default=200, ge=0,
        description="bootstrap refits of the chosen configuration for the instability analysis and the served "
        "uncertainty intervals (Riley et al. ask for at least 200; 0 turns both off)",
    )
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    # Validation design (README "How a model is validated"). "auto": a held-out split only when it
    # would hold at least split_min_test_events events; otherwise fit on all patients and correct
    # the whole procedure by repeated cross-validation (pipeline/train/validation.py says why not Harrell's bootstrap).
    validation: Literal["auto", "split", "repeated_cv"] = "auto"
    split_min_test_events: int = Field(default=100, ge=1)
    min_events: int = Field(default=20, ge=5, description="fewest events (and non-events) to train on")
    cv_repeats: int = Field(default=5, ge=1, description="repeats of the cross-validation of the whole procedure")
    # Issue 27: where the parallel work of a training (the repeated CV's folds, the bootstrap models,
    # the IECV centres) runs.
    # Unset: in this process (joblib's own workers); "local": a dask.distributed LocalCluster of
    # cluster_workers processes; "tcp://host:8786": an existing Dask scheduler (pipeline/train/cluster.py).
    cluster: str | None = Field(default=None, pattern=r"^(local|tcp://[A-Za-z0-9.\-]+:[0-9]{1,5})$")
    cluster_workers: int = Field(default=2, ge=1, le=256)
    # Monitoring inside `icans-risk serve`: every this many seconds, the answers of the last interval
    # against the development data (and their outcomes), as `make monitor` does; 0 = off.
    monitor_interval_s: float = Field(default=0.0, ge=0)
    # Monitoring judges calibration only on answers at least this old (ICANS is known within ~30 days).
    monitor_follow_up_days: float = Field(default=30.0, ge=0)
    # Local updating (pipeline/update/run.py): the closed test's level, and the fewest events to update on.
    update_alpha: float = Field(default=0.05, gt=0, lt=1)
    update_min_events: int = Field(default=10, ge=2)
    # A RUNNING training run whose heartbeat is this old (and whose process is not on this host) is
    # marked KILLED by the next training's sweep (pipeline/tracking/liveness.py).
    stale_run_s: float = Field(default=6 * 3600, gt=0, description="heartbeat age that marks a run dead")
    # A first model that fails the quality gate is registered as champion anyway, tagged ungated.
    allow_ungated: bool = Field(
        default=False, validation_alias=AliasChoices("ALLOW_UNGATED", "ICANS_ALLOW_UNGATED")
    )
    # PROMOTE=no / --no-promote: register and record the decision, but never move the alias.
    promote: bool = Field(default=True, validation_alias=AliasChoices("promote", "ICANS_PROMOTE"))

    # ---- NEW (issue 6): FHIR and CDS Hooks ---------------------------------------------------
    # Public base URL of this service as EHRs call it (e.g. https://cds.example.org). The `aud`
    # of a CDS client JWT must equal this + the endpoint path; the card's source links use it.
    # Required for the CDS Hooks endpoints when auth is on.
    cds_service_url: str | None = None
    # Trusted CDS clients: JWT `iss` -> PEM public key, or the path of a PEM file or a JWKS
    # (JSON) file. JSON in the environment: ICANS_CDS_ISSUERS='{"https://ehr.example": "/keys/ehr.jwks"}'
    cds_issuers: dict[str, str] = Field(default_factory=dict)
    # Asymmetric algorithms only (the CDS Hooks specification forbids `none` and HMAC).
    cds_jwt_algorithms: list[str] = Field(
        default_factory=lambda: ["RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS256", "PS384", "PS512"]
    )
    cds_jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    # Replay cache: a `jti` is remembered until its token expires; tokens valid for longer than
    # this (exp - now) or issued longer ago than this (now - iat) are refused.
    cds_jti_ttl_s: float = Field(default=600.0, gt=0, le=86_400)
    # Baseline window: the latest value within this many days before the anchor (the CAR T order,
    # lymphodepletion start or now, whichever is earliest) is used; older values are ignored.
    cds_baseline_window_days: float = Field(default=14.0, gt=0, le=365)
    # Lymphodepletion orders count if dated within this many days of the CAR T order.
    cds_lymphodepletion_window_days: float = Field(default=30.0, gt=0, le=365)
    # Site codes added to the documented tables (serving/fhir/codes.py): key = a feature name
    # (e.g. "il15_pg_ml") or a flag ("prior_neuro_comorbidity", "cns_involvement",
    # "prior_allo_hct"), value = ["system|code", ...].
    cds_extra_codes: dict[str, list[str]] = Field(default_factory=dict)
    # FHIR servers the service may query itself for prefetch keys a client did not send
    # (base URL prefixes). Empty = never fetch (missing required data is then answered with 412).
    cds_fhir_server_allowlist: list[str] = Field(default_factory=list)
    cds_fetch_timeout_s: float = Field(default=3.0, gt=0, le=30)
    # ---- end of issue 6 fields -----------------------------------------------------------------

    # ---- issue 25 (cds): the CDS fetch's budget, and probes outside the connection limit ----------
    # One hook call's fetching from the EHR's FHIR server (all keys, all pages): one deadline, a cap
    # on the bytes read, the requests made and the resources kept; run on its own threads
    # (cds_fetch_workers per process), never on the pool that answers other requests.
    cds_fetch_deadline_s: float = Field(default=10.0, gt=0, le=120)
    cds_fetch_max_bytes: int = Field(default=8_000_000, ge=1024)
    cds_fetch_max_requests: int = Field(default=40, ge=1)
    cds_fetch_max_entries: int = Field(default=5000, ge=1)
    cds_fetch_workers: int = Field(default=8, ge=1, le=256)
    # A rendered explanation page is kept this long per card (and link), so a reload of the page or
    # a crowd on one link does not draw it again; 0 = off.
    explanation_cache_s: float = Field(default=300.0, ge=0)
    explanation_cache_size: int = Field(default=256, ge=1)
    # /readyz names a failing registry within one probe interval: each load attempt's HTTP calls to
    # the tracking server get this timeout and this many retries (MLflow's defaults, 120 s and 7
    # retries with a doubling backoff, kept a start-up attempt "loading" for over 4 minutes); the
    # service's own backoff (ICANS_MODEL_LOAD_*) retries the attempts. Explicit MLFLOW_HTTP_REQUEST_*
    # variables win.
    mlflow_http_timeout_s: float = Field(default=10.0, gt=0, le=300)
    mlflow_http_max_retries: int = Field(default=1, ge=0, le=10)
    # ---- end of issue 25 (cds) fields ---------------------------------------------------------------

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> "Settings":
        if self.outcome not in OUTCOMES:
            raise ValueError(f"ICANS_OUTCOME must be one of {sorted(OUTCOMES)}")
        if not set(self.families) <= set(FAMILIES):
            raise ValueError(f"ICANS_FAMILIES must name only {', '.join(FAMILIES)}")
        if self.store_timeout_s * 4 > self.audit_timeout_s:
            raise ValueError(
                "ICANS_STORE_TIMEOUT_S must be at most a quarter of ICANS_AUDIT_TIMEOUT_S "
                "(the database must give up before the caller does)"
            )
        if self.env != "development":
            if self.tracking_uri == _default_tracking_uri():
                raise ValueError(
                    "MLFLOW_TRACKING_URI must be set explicitly outside development "
                    "(the embedded SQLite default is for one laptop)"
                )
            if self.auth == "off":
                raise ValueError("ICANS_AUTH=off is for development only")
            if self.audit_hmac_key.get_secret_value() == DEV_AUDIT_KEY:
                raise ValueError("ICANS_AUDIT_HMAC_KEY must be set to a secret outside development")
            lock = self.lock_url or self.tracking_uri
            if not lock.startswith(("postgresql", "postgres", "sqlite")):
                raise ValueError(
                    "set ICANS_LOCK_URL to a PostgreSQL URL that every trainer reaches: with a tracking "
                    "server the promotion lock would be a file lock on one host only"
                )
            if "*" in self.cors_origins:
                raise ValueError("ICANS_CORS_ORIGINS may not be '*' outside development")
        return self

    @property
    def resolved_model_uri(self) -> str:
        if self.model_uri:
            return self.model_uri
        return f"models:/{OUTCOMES[self.outcome].registered_model}@{self.champion_alias}"


def get_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
