"""Settings, validated once at start-up and passed down from the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.embedding.sentence import MINILM_SHA256
from registry.embedding.template import DEFAULT_TEMPLATE
from registry.store.engine import sqlite_url


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # when set, clients must present a certificate it signed (mTLS)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_message_bytes: int = 4 * 1024 * 1024
    max_call_s: float = 60.0  # no call runs longer, whatever deadline it carries
    calls_per_s_per_key: float = 2000.0  # 0: unlimited
    burst_per_key: float = 4000.0


class Settings(BaseSettings):
    """Every setting can come from a CAPREG_* environment variable or a CLI flag."""

    model_config = SettingsConfigDict(env_prefix="CAPREG_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)  # 0 picks a free port
    data_dir: Path = Path(".capreg")
    database_url: str | None = None  # SQLite under data_dir when unset
    migrate_on_start: bool | None = None  # default: yes for the embedded SQLite, no for a server database

    model_path: Path | None = None  # the bundled all-MiniLM-L6-v2 when unset
    model_sha256: str | None = MINILM_SHA256  # None skips the check (a model of your own)
    vector_space: str = "minilm-l6-v2"
    capability_template: str = DEFAULT_TEMPLATE
    embed_cache_size: int = Field(10_000, ge=0)
    # How the bundled model runs: "torch" (sentence-transformers), or "onnx" (ONNX Runtime: the same vectors
    # within registry/embedding/onnx_backend.py's stated tolerance, one text ~2.7x faster, no torch at serving
    # time; exported once into <models_dir>/onnx/all-minilm-l6-v2, which needs torch).
    embedding_backend: Literal["torch", "onnx"] = "torch"
    # Where named embedding models that are built locally (`capreg models distill`) are cached; <data_dir>/models
    # when unset (registry/embedding/models.py resolve_models_dir).
    models_dir: Path | None = None
    # How many recent Discover texts each server keeps in memory, as tasks for `capreg vectors compare`.
    recent_texts: int = Field(1000, ge=0)
    max_watches: int = Field(1000, ge=0)  # open WatchDiscover streams per process
    max_outcomes_per_capability: int = Field(10_000, ge=1)  # the oldest outcomes of a capability go past this

    hnsw_m: int = Field(16, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=16)
    hnsw_ef_search: int = Field(128, ge=8)
    # The planner (see docs/benchmarks.md): exact scoring up to exact_always_rows allowed rows, and up to
    # exact_max_rows when under hnsw_min_selectivity of the catalog is allowed (post-filtered HNSW loses
    # recall there); HNSW with oversampling otherwise.
    exact_always_rows: int = Field(4096, ge=0)
    exact_max_rows: int = Field(16384, ge=0)
    hnsw_min_selectivity: float = Field(0.2, ge=0, le=1)

    # TLS: certificate chain and key (PEM); with a client CA, clients must present certificates (mTLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Authentication is on unless switched off explicitly (loudly logged; local development only).
    auth_enabled: bool = True
    # How often the change-log follower polls (NOTIFY wakes it at once on PostgreSQL).
    change_poll_s: float = Field(0.5, gt=0)
    lease_grace_s: float = Field(30.0, ge=0)  # an agent whose lease ran out this long ago is removed
    lease_sweep_s: float = Field(1.0, gt=0)  # how often expired leases are looked for
    # How often the index is snapshotted to <data_dir>/snapshots when it changed (0: never, not even at
    # shutdown; every start then rebuilds from the database).
    snapshot_interval_s: float = Field(60.0, ge=0)
    shutdown_grace_s: float = Field(5.0, ge=0)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_call_s: float = Field(60.0, gt=0)
    rate_limit_per_key: float = Field(2000.0, ge=0)  # calls per second per API key; 0 turns it off
    rate_burst_per_key: float = Field(4000.0, ge=1)

    def limits(self) -> ServerLimits:
        return ServerLimits(self.max_message_bytes, self.max_call_s, self.rate_limit_per_key, self.rate_burst_per_key)

    max_workers: int = Field(8, ge=1)  # threads for database and embedding work
    # Share the port with other processes (SO_REUSEPORT; `capreg serve --workers N` sets it for its workers).
    reuse_port: bool = False

    # Observability (registry/telemetry.py). Traces: "none" (the default, costs nothing), "console" (spans
    # printed as JSON), "otlp" (to otel_endpoint, else OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317).
    # Metrics: a Prometheus scrape endpoint on metrics_port (unset: none; 0 picks a free port) and, with
    # "otlp", pushed to the same endpoint every metrics_interval_s.
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = ""
    otel_service_name: str = "capreg"
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_interval_s: float = Field(15.0, gt=0)
    log_format: Literal["text", "json"] = "text"

    def tls(self) -> TlsFiles | None:
        if self.tls_cert_file is None and self.tls_key_file is None:
            if self.tls_client_ca_file is not None:
                raise ValueError("a client CA (mTLS) needs the server's own certificate and key too")
            return None
        if self.tls_cert_file is None or self.tls_key_file is None:
            raise ValueError("TLS needs both a certificate and its private key")
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    def is_embedded(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")
