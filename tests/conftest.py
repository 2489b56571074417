"""Shared fixtures: the example model repository, built once per session (no downloads)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"

#: The admin API key every test server starts with (tests that need their own users and state
#: use their own data directory). A well-formed inferd key, not a secret of any real server.
ADMIN_KEY = "inferd_TestAdmn_" + "t" * 43
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: The same for gRPC, whose metadata keys are lower-case.
ADMIN_GRPC = {"authorization": f"Bearer {ADMIN_KEY}"}

# Servers started by tests (in this process or as `inferd serve` subprocesses) keep their
# registry in a scratch directory, never in ~/.inferd, and hash passwords cheaply.
_SCRATCH = tempfile.mkdtemp(prefix="inferd-tests-")
os.environ["INFERD_DATA_DIR"] = _SCRATCH
os.environ["INFERD_AUTH__BOOTSTRAP_KEY"] = ADMIN_KEY
os.environ["INFERD_AUTH__ARGON2_TIME_COST"] = "1"
os.environ["INFERD_AUTH__ARGON2_MEMORY_KIB"] = "1024"


def _load_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "build_models", ROOT / "examples" / "build_models.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_models"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example_repo() -> Path:
    """examples/models with its binary artifacts built (idempotent)."""
    builder = _load_builder()
    builder.main(["--out", str(EXAMPLES)])
    return EXAMPLES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- external services (PostgreSQL, Redis) ---------------------------------------------------
# On a laptop without them these tests skip with the reason; CI sets INFERD_TEST_REQUIRE_SERVICES=1
# so a missing service fails the run instead of skipping.

POSTGRES_DSN = os.environ.get(
    "INFERD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("INFERD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, error: BaseException) -> None:
    reason = f"{what} is not reachable ({type(error).__name__}: {error})"
    if os.environ.get("INFERD_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; INFERD_TEST_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy asyncpg URL), dropped afterwards."""
    import asyncpg

    name = f"inferd_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as e:
        _unavailable("PostgreSQL", e)
    base = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis URL; the test must use `redis_prefix` for its keys (removed afterwards)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        _unavailable("Redis", e)
    yield REDIS_URL
    client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to the test; every key under it is deleted afterwards."""
    import redis

    prefix = f"inferd-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage_per_module() -> Iterator[None]:
    """A leaked socket, file or transport is reported (a ResourceWarning, an error here) when the
    garbage collector finds it; collecting at the end of each module pins the report on the
    module that leaked, not on whichever test happens to run when the collector does."""
    yield
    gc.collect()
