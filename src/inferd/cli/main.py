"""The `inferd` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from inferd._version import __version__
from inferd.cli.platform import register


@click.group()
@click.version_option(__version__, prog_name="inferd")
def cli() -> None:
    """inferd: serve models over the Open Inference Protocol (V2), KServe V1 and more."""


@cli.command()
@click.option(
    "--model-repository",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of models: DIR/<model>/[model.yaml] and DIR/<model>/<version>/<files>.",
)
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 8000).")
@click.option(
    "--grpc-host", default=None, help="Interface gRPC binds (default: --host, else 127.0.0.1)."
)
@click.option("--grpc-port", type=int, default=None, help="gRPC port (default 8001; 0 = any).")
@click.option("--no-grpc", is_flag=True, help="Do not serve gRPC.")
@click.option("--max-body-bytes", type=int, default=None, help="Largest request body (bytes).")
@click.option("--server-name", default=None, help="Name GET /v2 reports (default inferd).")
@click.option("--log-level", default=None, help="debug, info, warning, error.")
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Registry database (SQLite), artifacts and caches (default ~/.inferd).",
)
@click.option(
    "--database-url", default=None, help="postgresql+asyncpg://user@host/db (default SQLite)."
)
@click.option(
    "--artifact-store", default=None, help="Directory or s3://bucket/prefix for artifacts."
)
@click.option("--s3-endpoint-url", default=None, help="S3-compatible endpoint (MinIO, ...).")
@click.option("--redis-url", default=None, help="Redis shared by several nodes (rate limits).")
def serve(
    model_repository: Path | None,
    host: str | None,
    http_port: int | None,
    grpc_host: str | None,
    grpc_port: int | None,
    no_grpc: bool,
    max_body_bytes: int | None,
    server_name: str | None,
    log_level: str | None,
    no_access_log: bool,
    data_dir: Path | None,
    database_url: str | None,
    artifact_store: str | None,
    s3_endpoint_url: str | None,
    redis_url: str | None,
) -> None:
    """Serve every model in a model repository."""
    from pydantic import ValidationError

    from inferd.runner import run
    from inferd.settings import Settings

    try:
        settings = Settings()
        if model_repository is not None:
            settings.model_repository = model_repository
        http = settings.http
        if host is not None:
            http.host = host
        if http_port is not None:
            http.port = http_port
        grpc = settings.grpc
        grpc_host = grpc_host if grpc_host is not None else host
        if grpc_host is not None:
            grpc.host = grpc_host
        if grpc_port is not None:
            grpc.port = grpc_port
        if no_grpc:
            grpc.enabled = False
        if max_body_bytes is not None:
            http.max_body_bytes = max_body_bytes
        if server_name is not None:
            http.server_name = server_name
        if log_level is not None:
            settings.log_level = log_level
        if no_access_log:
            http.access_log = False
        if data_dir is not None:
            settings.data_dir = data_dir
        reg = settings.registry
        if database_url is not None:
            reg.database_url = database_url
        if artifact_store is not None:
            reg.artifact_store = artifact_store
        if s3_endpoint_url is not None:
            reg.s3_endpoint_url = s3_endpoint_url
        if redis_url is not None:
            settings.redis_url = redis_url
    except ValidationError as e:
        raise click.UsageError(_first_error(e)) from None
    run(settings)


def _first_error(e: Exception) -> str:
    errors: list[dict[str, Any]] = getattr(e, "errors", lambda: [])()
    if not errors:
        return str(e)
    err = errors[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"invalid setting {where or 'value'}: {err.get('msg')}"


register(cli)  # login, keys, models, deploy, deployments, predict (inferd.cli.platform)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
