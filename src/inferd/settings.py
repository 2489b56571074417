"""All configuration, from arguments or `INFERD_<SECTION>__<FIELD>` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inferd.core.errors import InvalidInput
from inferd.core.scaling import parse_bytes, parse_gpu_budget


class HttpSettings(BaseModel):
    """The REST listener."""

    model_config = ConfigDict(validate_assignment=True)

    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 unless told otherwise")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request body, also after decompression (413)"
    )
    max_chunks: int = Field(
        65_536,
        gt=0,
        description="Most chunks of a chunked (Transfer-Encoding: chunked) request body, counted "
        "on the wire (400 and the connection is closed)",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="The whole request head (request line and headers) must arrive within this "
        "time of its first byte, or of the connection opening (408, then close)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Time a request body gets after its head, plus one second per "
        "body_min_bytes_per_s bytes received; a stalled body is cut off (408, or close once the "
        "response has started)",
    )
    body_min_bytes_per_s: int = Field(
        16_384,
        ge=0,
        description="Average rate a body must keep up to earn time beyond body_timeout_s "
        "(0: the whole body must arrive within body_timeout_s)",
    )
    keep_alive_timeout_s: float = Field(
        30.0, gt=0, description="An idle keep-alive connection is closed after this time"
    )
    max_header_count: int = Field(
        100, gt=0, description="Most header fields in one request (431 and close)"
    )
    max_header_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="Largest request head: target URL plus header names and values (431 and close)",
    )
    max_connections_per_client: int = Field(
        256,
        gt=0,
        description="Open connections one client address may hold; a new one over it is closed "
        "at once",
    )
    server_name: str = Field("inferd", description="Name reported by GET /v2")
    access_log: bool = Field(True, description="One JSON access-log line per request")


class GrpcSettings(BaseModel):
    """The gRPC listener (`inference.GRPCInferenceService` + `grpc.health.v1.Health`)."""

    model_config = ConfigDict(validate_assignment=True)

    enabled: bool = Field(True, description="Serve gRPC next to REST")
    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 unless told otherwise")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest gRPC message sent or received, also after decompression "
        "(RESOURCE_EXHAUSTED)",
    )
    transport: Literal["native", "grpcio"] = Field(
        "native",
        description="native: inferd's HTTP/2 on the event loop (fastest); grpcio: grpc.aio",
    )
    # The native transport's bounds (docs/grpc-api.md#limits); grpcio applies the idle and
    # keepalive ones too.
    max_buffered_bytes_per_connection: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Request bytes one connection may hold before its handlers take them "
        "(partial and waiting messages); the call that goes over gets RESOURCE_EXHAUSTED",
    )
    max_buffered_bytes_total: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="The same, summed over every gRPC connection of the server",
    )
    idle_timeout_s: float = Field(
        300.0, ge=0, description="Close a connection without a call for this long (0: never)"
    )
    read_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Close a connection whose frame or header block stays incomplete this long "
        "(0: never)",
    )
    keepalive_interval_s: float = Field(
        60.0, ge=0, description="PING a connection silent for this long (0: never)"
    )
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="Close a connection whose PING is not answered within this"
    )
    max_connections_per_client: int = Field(
        256,
        gt=0,
        description="Open gRPC connections one client address may hold (native transport); a "
        "new one over it is closed at once",
    )

    @model_validator(mode="after")
    def _buffers_hold_a_message(self) -> GrpcSettings:
        if self.max_buffered_bytes_per_connection < self.max_message_bytes:
            raise ValueError("max_buffered_bytes_per_connection must be >= max_message_bytes")
        if self.max_buffered_bytes_total < self.max_buffered_bytes_per_connection:
            raise ValueError(
                "max_buffered_bytes_total must be >= max_buffered_bytes_per_connection"
            )
        return self


class AuthSettings(BaseModel):
    """Users, tokens, API keys and who may call what."""

    model_config = ConfigDict(validate_assignment=True)

    anonymous_inference: bool = Field(
        True, description="Callers without credentials may use public models (never private ones)"
    )
    public_metrics: bool = Field(
        True,
        description="/metrics readable without credentials; callers who are not admins see "
        "only the series of models they may see (public ones, and their own)",
    )
    metrics_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="Token a scraper sends as `Authorization: Bearer <token>` to read every "
        "series of /metrics, private models' included (unset: only admins read those)",
    )
    open_registration: bool = Field(
        False, description="Anyone may register a member account (otherwise admins create users)"
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 signing key (>= 32 bytes); generated once and kept in the database"
    )
    issuer: str = Field("inferd", description="JWT `iss` and `aud`")
    access_token_ttl_s: int = Field(900, gt=0, description="Access token lifetime")
    refresh_token_ttl_s: int = Field(14 * 24 * 3600, gt=0, description="Refresh token lifetime")
    bootstrap_admin: str = Field("admin", description="Username of the admin made on first start")
    bootstrap_key: SecretStr | None = Field(
        None,
        description="API key (inferd_...) for the first admin; otherwise one is generated and "
        "printed once",
    )
    bootstrap_password: SecretStr | None = Field(
        None, description="Password for the first admin (otherwise it can only use its key)"
    )
    credential_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a node trusts a cached key/user lookup (revocation on "
        "other nodes takes effect within this time; on the revoking node at once)",
    )
    argon2_time_cost: int = Field(3, ge=1, description="argon2id passes")
    argon2_memory_kib: int = Field(65536, ge=1024, description="argon2id memory per hash (KiB)")


class LimitSettings(BaseModel):
    """Default quotas (per user; a key or user may carry its own)."""

    model_config = ConfigDict(validate_assignment=True)

    requests_per_minute: int | None = Field(
        None, gt=0, description="Requests per minute per key/user (None: unlimited)"
    )
    concurrent_requests: int | None = Field(
        None, gt=0, description="Requests in flight per user (None: unlimited)"
    )
    storage_bytes: int = Field(50 * 2**30, gt=0, description="Artifact storage per user (bytes)")
    login_attempts_per_minute: int = Field(
        10, gt=0, description="Login attempts per username and per client address"
    )
    redis_fail_open: bool = Field(
        False, description="When Redis is down: allow requests (true) or answer 503 (false)"
    )


class RegistrySettings(BaseModel):
    """Where registry state and artifacts live."""

    model_config = ConfigDict(validate_assignment=True)

    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL (postgresql+asyncpg://...); default SQLite in data_dir",
    )
    artifact_store: str | None = Field(
        None, description="Directory or s3://bucket/prefix; default data_dir/artifacts"
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, ...)")
    s3_region: str | None = Field(None, description="S3 region")
    s3_access_key: SecretStr | None = Field(None, description="S3 access key (else boto3's chain)")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key")
    max_upload_bytes: int = Field(10 * 2**30, gt=0, description="Largest artifact upload/import")
    allow_private_urls: bool = Field(
        False, description="Let URL imports reach loopback/private addresses (SSRF guard off)"
    )
    skops_trusted_types: list[str] = Field(
        default_factory=lambda: ["sklearn.tree._tree.Tree"],
        description="Classes every uploaded skops model may use beyond skops' own trusted set "
        "(the operator's list; users cannot widen it unless an admin marked them trusted)",
    )
    reconcile_interval_s: float = Field(
        5.0, gt=0, description="How often the reconciler re-reads deployments (other nodes' edits)"
    )


class WorkerSettings(BaseModel):
    """Isolation of the worker processes that run model code (docs/model-repository.md,
    "Worker isolation")."""

    model_config = ConfigDict(validate_assignment=True)

    user: str = Field(
        "nobody",
        description="Unprivileged user the worker processes run as when the server runs as "
        "root ('' keeps them as root); a server that is not root runs them as its own user",
    )
    repository_network: bool = Field(
        True,
        description="Workers of model-repository models may use the network unless their "
        "model.yaml says `network: false` (uploaded models never may)",
    )
    require_network_isolation: bool = Field(
        False,
        description="Refuse to load a model that must run without network when the kernel "
        "gives no network namespace (otherwise a warning, once, and it loads with the network)",
    )
    env_allow: list[str] = Field(
        default_factory=list,
        description="Environment variables passed to every worker beyond the built-in "
        "allow-list: names, or prefixes ending in '*' (INFERD_* never)",
    )
    scratch_dir: Path | None = Field(
        None,
        description="Where each worker gets its private, writable temp dir (TMPDIR); default: "
        "the system temp dir",
    )


class ResponseCacheSettings(BaseModel):
    """The response cache: answers of models whose config says `response_cache: {enable: true}`
    (docs/model-repository.md); other models are never cached."""

    model_config = ConfigDict(validate_assignment=True)

    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="memory: one cache per server process; redis: one cache shared by every "
        "node on the same Redis and redis_prefix",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Memory backend: bytes of entries kept (least recently used go first; 0 "
        "turns the cache off)",
    )
    max_entry_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Answers larger than this (encoded) are not cached"
    )
    redis_url: str | None = Field(
        None, description="Redis backend: its URL (default: the top-level redis_url)"
    )
    ttl_s: float | None = Field(
        3600.0,
        gt=0,
        description="Redis backend: entries expire after this many seconds (None: never; "
        "Redis' maxmemory policy bounds the total)",
    )


class JobSettings(BaseModel):
    """Async predictions (docs/control-plane.md, "Async predictions")."""

    model_config = ConfigDict(validate_assignment=True)

    concurrency: int = Field(
        2, ge=0, le=1024,
        description="Jobs this server runs at once (0: it takes none; another node may)",
    )  # fmt: skip
    max_attempts: int = Field(
        3, ge=1, le=100,
        description="Tries of a job whose server stopped while it ran, before it is failed",
    )  # fmt: skip
    poll_interval_s: float = Field(
        1.0, gt=0, le=3600,
        description="How often an idle runner looks for jobs another node queued (jobs "
        "submitted to this server wake it at once)",
    )  # fmt: skip
    max_input_bytes: int = Field(
        16 * 2**20, gt=0,
        description="Largest job input (JSON bytes) accepted",
    )  # fmt: skip
    lease_s: float = Field(
        30.0, ge=1, le=3600,
        description="How long a node holds a job it runs without renewing (renewed every "
        "third of it): a job whose node died runs again after at most this long",
    )  # fmt: skip
    result_inline_bytes: int = Field(
        256 * 2**10, ge=0,
        description="Results larger than this (JSON bytes) are kept in the artifact store, "
        "not in the database row",
    )  # fmt: skip
    retention_s: float = Field(
        7 * 86400, ge=0,
        description="Ended jobs (and their results and webhook deliveries) are deleted this "
        "long after they ended (0: kept forever)",
    )  # fmt: skip


class WebhookSettings(BaseModel):
    """Webhooks of async predictions (docs/control-plane.md, "Webhooks")."""

    model_config = ConfigDict(validate_assignment=True)

    timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="One delivery attempt (resolving, connecting, sending, the answer's head) "
        "must end within this time, or it counts as failed",
    )  # fmt: skip
    max_attempts: int = Field(
        12, ge=1, le=100,
        description="Attempts of one delivery before it is `failed` (a 2xx answer delivers it; "
        "any other answer, a redirect or a network error is retried)",
    )  # fmt: skip
    backoff_base_s: float = Field(
        1.0, gt=0, le=3600,
        description="The wait before the second attempt is drawn from [0, base]; each later "
        "one from twice the range before it (full jitter), up to backoff_max_s",
    )  # fmt: skip
    backoff_max_s: float = Field(
        600.0, gt=0, le=86400, description="The longest wait between two attempts"
    )  # fmt: skip
    allow_private_urls: bool = Field(
        False,
        description="Let webhooks reach loopback, private and link-local addresses (the SSRF "
        "guard off: only where every user is trusted)",
    )
    secret_rotation_grace_s: float = Field(
        86400.0, ge=0, le=90 * 86400,
        description="After a user rotates their signing secret, the previous one also signs "
        "deliveries for this long, so receivers can switch over",
    )  # fmt: skip
    concurrency: int = Field(
        8, ge=0, le=1024,
        description="Deliveries this server sends at once (0: it sends none; another node may)",
    )  # fmt: skip
    poll_interval_s: float = Field(
        5.0, gt=0, le=3600,
        description="How often an idle sender looks for deliveries queued by another node "
        "(deliveries of jobs that end here, and retries, are sent on time without it)",
    )  # fmt: skip


class BatchSettings(BaseModel):
    """Batch jobs and OpenAI's batch API (docs/control-plane.md, "Batch jobs")."""

    model_config = ConfigDict(validate_assignment=True)

    concurrency: int = Field(
        1, ge=0, le=64,
        description="Batch jobs this server runs at once (0: it runs none; another node may)",
    )  # fmt: skip
    chunk_rows: int = Field(
        500, ge=1, le=100_000,
        description="Rows per chunk: a chunk's output is stored, then recorded as done, so a "
        "job resumes after a restart from its first chunk not recorded",
    )  # fmt: skip
    max_in_flight: int = Field(
        64, ge=1, le=4096,
        description="Requests of one batch job in flight at once: what the model's dynamic "
        "batching merges",
    )  # fmt: skip
    rows_per_request: int = Field(
        64, ge=1, le=65_536,
        description="CSV and Parquet rows sent in one request (at most the model's "
        "max_batch_size, when it has one)",
    )  # fmt: skip
    max_file_bytes: int = Field(
        200 * 2**20, gt=0,
        description="Largest file accepted (an upload, or an input read from the artifact "
        "store)",
    )  # fmt: skip
    lease_s: float = Field(
        30.0, ge=1, le=3600,
        description="How long a node holds a batch job without renewing (renewed every third "
        "of it): a job whose node died resumes on another (or the restarted) node after at "
        "most this long",
    )  # fmt: skip
    poll_interval_s: float = Field(
        2.0, gt=0, le=3600,
        description="How often an idle runner looks for batch jobs to run (jobs created on "
        "this server wake it at once)",
    )  # fmt: skip
    row_attempts: int = Field(
        4, ge=1, le=100,
        description="Tries of a row refused for a passing reason (model loading or "
        "overloaded: 503, 429) before its error is recorded",
    )  # fmt: skip


class ServingSettings(BaseModel):
    """How models share this server (docs/model-repository.md, "Memory budget")."""

    model_config = ConfigDict(validate_assignment=True)

    memory_budget_bytes: int | None = Field(
        None,
        gt=0,
        description="Memory the loaded models of this server may hold together: bytes or a size "
        "like '2GiB'. Set, models load on their first request and the least recently used idle "
        "ones (not pinned) are unloaded to make room; unset, every model loads at start",
    )

    load_wait_s: float = Field(
        30.0,
        ge=0,
        description="With a memory budget: how long a load waits for room that busy models "
        "(requests in flight, loading) hold before its request is refused with 503",
    )

    gpu_memory_budget: int | float | None = Field(
        None,
        gt=0,
        description="Memory the loaded models may hold on each GPU: bytes, a size like "
        "'20GiB', or a fraction of the GPU's memory like 0.9 or '90%'. Set, a model with "
        "'resources.gpu' is placed on the GPUs with room, and idle models are unloaded to make "
        "room there as under memory_budget_bytes; unset, models see every GPU",
    )

    gpus: list[int] | None = Field(
        None,
        description="With gpu_memory_budget: the GPUs (NVML / PCI bus indices) models are "
        "placed on; unset, every GPU the NVIDIA driver reports",
    )

    @field_validator("gpu_memory_budget", mode="before")
    @classmethod
    def _gpu_budget(cls, value: object) -> object:
        if value is None:
            return None
        try:
            return parse_gpu_budget(value, "serving.gpu_memory_budget")
        except InvalidInput as e:
            raise ValueError(e.message) from None

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(i < 0 for i in value):
            raise ValueError("GPU indices must be >= 0")
        return value

    @field_validator("memory_budget_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().isdigit():
            try:
                return parse_bytes(value, "serving.memory_budget_bytes")
            except InvalidInput as e:
                raise ValueError(e.message) from None
        return value


class Settings(BaseSettings):
    """The root of inferd's configuration; `app.build()` turns it into a running server."""

    model_config = SettingsConfigDict(
        env_prefix="INFERD_", env_nested_delimiter="__", validate_assignment=True
    )

    model_repository: Path | None = Field(None, description="Folder of models to serve")
    http: HttpSettings = Field(default_factory=HttpSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    log_level: str = Field("info", description="debug, info, warning or error")
    shutdown_grace_s: float = Field(30.0, ge=0, description="Time in-flight requests get to finish")
    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".inferd",
        description="Database (SQLite), artifacts and caches when not configured elsewhere",
    )
    redis_url: str | None = Field(
        None, description="Redis for limits shared by several nodes (memory when unset)"
    )
    redis_prefix: str = Field("inferd", description="Prefix of every Redis key inferd writes")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    response_cache: ResponseCacheSettings = Field(default_factory=ResponseCacheSettings)
