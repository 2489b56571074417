"""All configuration, from arguments or `INFERD_<SECTION>__<FIELD>` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class HttpSettings(BaseModel):
    """The REST listener."""

    model_config = ConfigDict(validate_assignment=True)

    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 unless told otherwise")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request body, also after decompression (413)"
    )
    max_chunks: int = Field(65_536, gt=0, description="Most body chunks accepted per request")
    server_name: str = Field("inferd", description="Name reported by GET /v2")
    access_log: bool = Field(True, description="One JSON access-log line per request")


class GrpcSettings(BaseModel):
    """The gRPC listener (`inference.GRPCInferenceService` + `grpc.health.v1.Health`)."""

    model_config = ConfigDict(validate_assignment=True)

    enabled: bool = Field(True, description="Serve gRPC next to REST")
    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 unless told otherwise")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    max_message_bytes: int = Field(
        2**31 - 1, gt=0, description="Largest gRPC message sent or received (as tritonclient)"
    )


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
