"""One settings object for the whole product, read from ``IRIS_*`` environment variables.

Every path and endpoint is computed here, from the package location, so nothing else in the
code base guesses where the project lives. Importing this module has no side effects.

Longer than our ~250-line guide on purpose: it is declarative, one field per setting with
its description, and ``docs/configuration.md`` is generated from those fields.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parents[1]
"""The checkout (or, inside a Bento, the ``src`` folder) that holds ``training/``."""

JOBS_SCHEMES = ("postgresql", "postgresql+psycopg2", "sqlite")
"""Databases the retrain job store supports (``IRIS_JOBS_URI``)."""

SelectionMetric = Literal["test_accuracy", "test_f1_macro", "test_log_loss"]


class Settings(BaseSettings):
    """Configuration for training, the registry, the model store and the service.

    Unset paths are derived from ``home`` so that one variable (``IRIS_HOME``) moves all
    mutable state (MLflow store, processed data, logs, job records) somewhere writable.
    """

    model_config = SettingsConfigDict(env_prefix="IRIS_", extra="ignore")

    home: Path = Field(
        PROJECT_DIR,
        description="Root folder for all mutable state: MLflow store, processed data, logs,"
        " job records, captures.",
    )
    raw_data: Path = Field(
        PROJECT_DIR / "data" / "raw" / "Iris.csv", description="Raw Iris CSV the CLI trains on."
    )
    processed_dir: Path | None = Field(
        None, description="Where train/test CSVs are written (default: $IRIS_HOME/data/processed)."
    )
    log_dir: Path | None = Field(
        None, description="Folder for .log files (default: $IRIS_HOME/logs)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of every process; DEBUG adds per-prediction logs."
    )

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking and registry URI, e.g. http://mlflow:5000"
        " (default: sqlite:///$IRIS_HOME/mlflow.db).",
    )
    artifact_root: str | None = Field(
        None,
        description="Artifact location of a new experiment in a local store"
        " (default: $IRIS_HOME/mlruns).",
    )
    experiment_name: str = Field(
        "iris-classifier", description="MLflow experiment that training runs go to."
    )
    model_name: str = Field("iris-classifier", description="Registered model name.")
    bento_model_name: str = Field("iris-classifier", description="BentoML model store name.")
    selection_metric: SelectionMetric = Field(
        "test_accuracy",
        description="Test metric that picks the best candidate (the gate decides on accuracy).",
    )
    seed: int = Field(1, description="Seed for the split, both models and the gate.")
    test_size: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of the rows held out as the test split."
    )
    promotion_margin: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="The gate promotes only if the candidate's accuracy could be worse than"
        " the champion's by at most this much (95% CI low bound; training.gate).",
    )

    # Service
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for /retrain, /jobs and the model repository's load and"
        " unload; unset, those are disabled (403).",
    )
    reload_interval_s: float = Field(
        10.0, gt=0, description="How often every worker checks the champion alias."
    )
    max_batch_size: int = Field(
        10_000, ge=1, description="Most flowers in one batch request (413 above it)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body in bytes (413 above it)."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for a request body (408 after it)."
    )
    retrain_data: Path | None = Field(
        None, description="CSV that /retrain trains on (default: raw_data)."
    )
    follow_registry: bool = Field(
        True,
        description="Poll the registry and hot-reload new champions; false serves only the"
        " packed model.",
    )
    grpc_host: str = Field("0.0.0.0", description="Interface for the gRPC (Open Inference) server.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 disables gRPC.")
    jobs_db: Path | None = Field(
        None,
        description="SQLite file holding retrain job records"
        " (default: $IRIS_HOME/var/jobs.sqlite).",
    )
    jobs_uri: SecretStr | None = Field(
        None,
        description="Database for retrain job records shared by a fleet, e.g."
        " postgresql://user:password@host:5432/db (default: the SQLite file IRIS_JOBS_DB).",
    )
    jobs_lease_s: float = Field(
        30.0,
        gt=0,
        description="A retrain whose heartbeat is older than this is reported failed"
        " (interrupted).",
    )
    drain_s: float = Field(
        0.0,
        ge=0,
        description="At SIGTERM, answer /readyz 503 and keep serving this long before"
        " shutting down (let a load balancer take the replica out first).",
    )
    retrain_timeout_s: float = Field(
        900.0, gt=0, description="A retrain running longer is killed and failed."
    )
    # Capture of every answered prediction (serving/capture.py).
    capture: bool = Field(True, description="Capture every prediction to Parquet files.")
    capture_dir: Path | None = Field(
        None, description="Capture folder (default: $IRIS_HOME/var/captures)."
    )
    capture_flush_s: float = Field(
        1.0, gt=0, description="Capture flush interval (what a hard kill can lose)."
    )
    capture_max_pending: int = Field(
        100_000,
        ge=1,
        description="Rows a worker holds for capture (queued or spooled, not yet written) "
        "before new ones are dropped.",
    )
    capture_sink_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="Niceness of each worker's capture sink process (Parquet, index), never "
        "below the worker's own: under full load answering comes first, the sink gets a "
        "small share of a saturated core, and its backlog is bounded by "
        "IRIS_CAPTURE_MAX_PENDING.",
    )
    capture_retention_days: int = Field(
        30,
        ge=1,
        description="Keep captures and indexed predictions this many days (labels: "
        "IRIS_LABEL_RETENTION_DAYS).",
    )
    label_retention_days: int = Field(
        365,
        ge=1,
        description="Keep ground-truth labels (each with its flower's measurements: the "
        "training data of a retrain with feedback) this many days, however long the "
        "captures they label are kept.",
    )
    capture_max_bytes: int = Field(
        1 << 30, ge=1 << 20, description="Delete the oldest captures beyond this many bytes."
    )
    # Ground truth, live quality and drift (training/loop_store.py, serving/loop_monitor.py).
    loop_uri: SecretStr | None = Field(
        None,
        description="Database of served predictions and feedback (SQLAlchemy URL; default: "
        "IRIS_JOBS_URI if set, so a fleet shares one PostgreSQL, else"
        " sqlite:///$IRIS_HOME/var/loop.sqlite).",
    )
    feedback_token: SecretStr | None = Field(
        None, description="Bearer token for POST /feedback (default: the admin token)."
    )
    live_window_s: float = Field(
        3600.0,
        gt=0,
        description="Live accuracy covers predictions from this far back (to the minute).",
    )
    drift_window_rows: int = Field(
        2000, ge=50, description="Drift compares this many newest predictions to training."
    )
    loop_interval_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description="How often live accuracy and drift are recomputed (at most 300 s: the "
        "IrisLoopGaugesStale alert takes gauges over 10 min old for a failing database).",
    )
    db_statement_timeout_s: float = Field(
        10.0,
        gt=0,
        description="On PostgreSQL, the longest a statement of the server (feedback, capture"
        " index, live quality and drift, retrain jobs) may run or wait for a lock before it"
        " fails: a locked or frozen database makes /feedback, /retrain and /jobs a 503 (after"
        " this plus 5 s at most), not a hang. SQLite waits at most 5 s for a lock.",
    )
    # The challenger on live traffic (serving/challenger.py, serving/shadow_scoring.py);
    # the canary split itself is the registered model's canary_percent tag, so every
    # worker and replica follows it.
    shadow_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of champion answers the challenger scores in shadow (in the "
        "capture sink: needs capture).",
    )
    canary_key_header: str = Field(
        "x-client-key", description="Header whose value keeps a client on one canary side."
    )
    # MLflow's HTTP client in the processes a worker starts. A retrain may wait out a brief
    # registry hiccup; a model fetch fails fast and is retried at the next poll instead.
    retrain_mlflow_retries: int = Field(
        2, ge=0, description="MLflow HTTP retries in a retrain subprocess."
    )
    retrain_mlflow_timeout_s: float = Field(
        30.0, gt=0, description="MLflow HTTP timeout in a retrain subprocess."
    )
    fetch_mlflow_retries: int = Field(
        0,
        ge=0,
        description="MLflow HTTP retries when a worker fetches a new champion (fails"
        " fast: the next poll retries).",
    )
    fetch_mlflow_timeout_s: float = Field(
        5.0, gt=0, description="MLflow HTTP timeout when a worker fetches a new champion."
    )
    loaded_versions: int = Field(
        2, ge=0, description="Non-champion versions a worker keeps loaded for /versions/{v}."
    )

    @field_validator("jobs_uri", "loop_uri")
    @classmethod
    def _our_database(cls, value: SecretStr | None, info) -> SecretStr | None:
        """Only the databases our stores are tested on; the message names the variable."""
        if value is not None and not value.get_secret_value():
            return None  # "" means unset: the default
        if value is not None:
            scheme = value.get_secret_value().partition("://")[0]
            if scheme not in JOBS_SCHEMES:
                raise ValueError(
                    f"IRIS_{info.field_name.upper()} must start with one of"
                    f" {', '.join(JOBS_SCHEMES)}:// (got {scheme or 'no scheme'!r})"
                )
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        home = self.home
        if self.processed_dir is None:
            self.processed_dir = home / "data" / "processed"
        if self.log_dir is None:
            self.log_dir = home / "logs"
        if self.jobs_db is None:
            self.jobs_db = home / "var" / "jobs.sqlite"
        if self.capture_dir is None:
            self.capture_dir = home / "var" / "captures"
        if self.tracking_uri is None:
            self.tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        if self.artifact_root is None:
            self.artifact_root = (home / "mlruns").as_uri()
        return self

    @property
    def jobs_url(self) -> str:
        """SQLAlchemy URL of the job records: ``jobs_uri`` if set, else the SQLite file."""
        return self.jobs_uri.get_secret_value() if self.jobs_uri else f"sqlite:///{self.jobs_db}"

    @property
    def loop_url(self) -> str:
        """SQLAlchemy URL of served predictions and feedback (see ``loop_uri``)."""
        for uri in (self.loop_uri, self.jobs_uri):
            if uri is not None and uri.get_secret_value():
                return uri.get_secret_value()
        return f"sqlite:///{self.home / 'var' / 'loop.sqlite'}"

    @property
    def train_csv(self) -> Path:
        return self.processed_dir / "train.csv"

    @property
    def test_csv(self) -> Path:
        return self.processed_dir / "test.csv"

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger value of ``selection_metric`` means a better model."""
        return not self.selection_metric.endswith("log_loss")


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (tests call ``get_settings.cache_clear()``)."""
    return Settings()
