"""RegistryStore against real databases: a SQLite file and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from inferd.core.errors import Conflict, NotFound
from inferd.core.records import (
    DeploymentConfig,
    DeploymentStatus,
    Role,
    Scope,
    User,
    VersionStatus,
    Visibility,
)
from inferd.registry.db import Database, sqlite_url
from inferd.registry.store import RegistryStore
from inferd.registry.tables import DeploymentRow

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


class FakeClock:
    """Pinned time that moves only when told to, so timestamps are exact."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "registry.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(db: Database, clock: FakeClock) -> RegistryStore:
    return RegistryStore(db, clock=clock)


async def _owner(store: RegistryStore, name: str = "alice") -> User:
    return await store.create_user(name, "hash", Role.MEMBER)


def _is_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


# ---- users ---------------------------------------------------------------------------------------


async def test_user_round_trip(store: RegistryStore) -> None:
    created = await store.create_user("Alice", "argon2$x", Role.ADMIN, trusted=True)
    assert created.username == "Alice"
    assert created.role is Role.ADMIN and created.trusted and not created.disabled
    assert created.created_at == T0 and _is_utc(created.created_at)
    assert len(created.id) == 32

    fetched = await store.get_user(created.id)
    assert fetched == created
    assert _is_utc(fetched.created_at)

    found = await store.find_user("aLiCe")
    assert found == (created, "argon2$x")
    assert await store.find_user("bob") is None


async def test_username_is_unique_case_insensitively(store: RegistryStore) -> None:
    await store.create_user("Alice", None, Role.MEMBER)
    with pytest.raises(Conflict) as e:
        await store.create_user("alice", None, Role.MEMBER)
    assert e.value.message == "username 'alice' is taken"
    assert await store.count_users() == 1


async def test_user_not_found(store: RegistryStore) -> None:
    with pytest.raises(NotFound, match="user not found"):
        await store.get_user("0" * 32)
    with pytest.raises(NotFound, match="user not found"):
        await store.update_user("0" * 32, disabled=True)


async def test_list_count_and_update_users(store: RegistryStore) -> None:
    bob = await store.create_user("bob", None, Role.MEMBER)
    alice = await store.create_user("Alice", "h1", Role.MEMBER)
    assert [u.username for u in await store.list_users()] == ["Alice", "bob"]
    assert await store.count_users() == 2

    updated = await store.update_user(
        alice.id,
        role=Role.ADMIN,
        trusted=True,
        disabled=True,
        rpm_limit=60,
        concurrency_limit=4,
        storage_quota_bytes=10 * 2**30,
        password_hash="h2",
    )
    assert updated.role is Role.ADMIN and updated.trusted and updated.disabled
    assert (updated.rpm_limit, updated.concurrency_limit) == (60, 4)
    assert updated.storage_quota_bytes == 10 * 2**30
    assert await store.get_user(alice.id) == updated
    assert await store.find_user("alice") == (updated, "h2")
    assert await store.get_user(bob.id) == bob  # untouched

    with pytest.raises(ValueError, match="username"):
        await store.update_user(alice.id, username="mallory")
    cleared = await store.update_user(alice.id, rpm_limit=None, password_hash=None)
    assert cleared.rpm_limit is None
    assert await store.find_user("alice") == (cleared, None)


# ---- API keys ------------------------------------------------------------------------------------


async def test_key_round_trip_revoke_and_touch(store: RegistryStore, clock: FakeClock) -> None:
    user = await _owner(store)
    expires = datetime(2031, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    scopes = frozenset({Scope.INFER, Scope.MANAGE})
    key = await store.create_key(
        user.id, "ci", "inferd_ab12cd34", "digest", scopes, expires, rpm_limit=30
    )
    assert key.scopes == frozenset({Scope.INFER, Scope.MANAGE})
    assert key.expires_at == expires and _is_utc(key.expires_at)
    assert key.revoked_at is None and key.last_used_at is None and key.rpm_limit == 30

    assert await store.get_key(key.id) == key
    assert await store.find_key("inferd_ab12cd34") == (key, "digest")
    assert await store.find_key("inferd_other") is None
    assert await store.list_keys(user.id) == [key]

    used = clock.advance(5)
    await store.touch_key(key.id, used)
    await store.touch_key(key.id, used - timedelta(seconds=3))  # a late report never goes back
    touched = await store.get_key(key.id)
    assert touched.last_used_at == used and _is_utc(touched.last_used_at)

    revoked_at = clock.advance(5)
    revoked = await store.revoke_key(key.id, revoked_at)
    assert revoked.revoked_at == revoked_at
    again = await store.revoke_key(key.id, clock.advance(5))
    assert again.revoked_at == revoked_at  # the first revocation stands
    assert (await store.get_key(key.id)).revoked_at == revoked_at


async def test_key_errors(store: RegistryStore) -> None:
    user = await _owner(store)
    await store.create_key(user.id, "a", "inferd_same", "d1", frozenset({Scope.INFER}), None)
    with pytest.raises(Conflict):
        await store.create_key(user.id, "b", "inferd_same", "d2", frozenset({Scope.INFER}), None)
    with pytest.raises(NotFound, match="user not found"):
        await store.create_key("0" * 32, "c", "inferd_new", "d", frozenset(), None)
    for call in (
        store.get_key("0" * 32),
        store.revoke_key("0" * 32, T0),
        store.touch_key("0" * 32, T0),
    ):
        with pytest.raises(NotFound, match="key not found"):
            await call
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create_key(user.id, "d", "inferd_naive", "d", frozenset(), datetime(2031, 1, 1))
    assert [k.prefix for k in await store.list_keys(user.id)] == ["inferd_same"]


async def test_keys_listed_per_user(store: RegistryStore, clock: FakeClock) -> None:
    alice, bob = await _owner(store, "alice"), await _owner(store, "bob")
    first = await store.create_key(alice.id, "1", "p1", "d", frozenset({Scope.ADMIN}), None)
    clock.advance()
    second = await store.create_key(alice.id, "2", "p2", "d", frozenset(), None)
    await store.create_key(bob.id, "3", "p3", "d", frozenset(), None)
    assert await store.list_keys(alice.id) == [first, second]


# ---- models --------------------------------------------------------------------------------------


async def test_model_round_trip_and_update(store: RegistryStore, clock: FakeClock) -> None:
    owner = await _owner(store)
    model = await store.create_model(
        name="iris",
        owner_id=owner.id,
        visibility=Visibility.PRIVATE,
        description="Fisher's iris",
        framework="sklearn",
        model_type="classifier",
        task_type="tabular",
        tags=["demo", "tabular"],
    )
    assert model.tags == ("demo", "tabular") and model.visibility is Visibility.PRIVATE
    assert model.created_at == model.updated_at == T0 and not model.system
    assert await store.get_model(model.id) == model
    assert await store.find_model("iris") == model
    assert await store.find_model("IRIS") is None  # names are case-sensitive

    later = clock.advance(60)
    updated = await store.update_model(
        model.id, description="new", tags=("x",), visibility=Visibility.PUBLIC, framework="onnx"
    )
    assert updated.description == "new" and updated.tags == ("x",)
    assert updated.visibility is Visibility.PUBLIC and updated.framework == "onnx"
    assert updated.updated_at == later and updated.created_at == T0
    assert await store.get_model(model.id) == updated
    with pytest.raises(ValueError, match="owner_id"):
        await store.update_model(model.id, owner_id=owner.id)


async def test_model_names(store: RegistryStore) -> None:
    owner = await _owner(store)
    await store.create_model(name="iris", owner_id=owner.id, visibility=Visibility.PUBLIC)
    with pytest.raises(Conflict) as e:
        await store.create_model(name="iris", owner_id=owner.id, visibility=Visibility.PUBLIC)
    assert e.value.message == "model name 'iris' is taken"
    other = await store.create_model(name="Iris", owner_id=owner.id, visibility=Visibility.PUBLIC)
    assert other.name == "Iris"
    with pytest.raises(NotFound, match="user not found"):
        await store.create_model(name="x", owner_id="0" * 32, visibility=Visibility.PUBLIC)
    for call in (
        store.get_model("0" * 32),
        store.update_model("0" * 32, description=""),
        store.delete_model("0" * 32),
    ):
        with pytest.raises(NotFound, match="model not found"):
            await call


async def test_list_models_visibility(store: RegistryStore) -> None:
    alice, bob = await _owner(store, "alice"), await _owner(store, "bob")
    mk = store.create_model
    await mk(name="b-private", owner_id=alice.id, visibility=Visibility.PRIVATE)
    await mk(name="a-public", owner_id=alice.id, visibility=Visibility.PUBLIC)
    await mk(name="c-bob-private", owner_id=bob.id, visibility=Visibility.PRIVATE)
    await mk(name="d-bob-public", owner_id=bob.id, visibility=Visibility.PUBLIC)
    await mk(name="e-system", owner_id=bob.id, visibility=Visibility.PUBLIC, system=True)

    names = [m.name for m in await store.list_models(visible_to=alice.id)]
    assert names == ["a-public", "b-private", "d-bob-public", "e-system"]
    names = [m.name for m in await store.list_models(visible_to=bob.id)]
    assert names == ["a-public", "c-bob-private", "d-bob-public", "e-system"]
    everything = await store.list_models()
    assert [m.name for m in everything] == [
        "a-public",
        "b-private",
        "c-bob-private",
        "d-bob-public",
        "e-system",
    ]
    assert [m.system for m in everything] == [False, False, False, False, True]


# ---- versions ------------------------------------------------------------------------------------


async def test_versions_round_trip(store: RegistryStore) -> None:
    owner = await _owner(store)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    v1 = await store.create_version(model.id, source="upload:m.onnx", created_by=owner.id)
    v2 = await store.create_version(model.id, source="url:https://x/m.onnx", created_by=None)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.status is VersionStatus.IMPORTING and v1.artifact_key == "" and v1.size_bytes == 0
    assert v1.created_by == owner.id and v2.created_by is None and _is_utc(v1.created_at)
    assert await store.get_version(model.id, 1) == v1
    assert await store.get_version_by_id(v2.id) == v2
    assert await store.list_versions(model.id) == [v1, v2]

    inputs = ({"name": "X", "datatype": "FP32", "shape": [-1, 4]},)
    outputs = ({"name": "Y", "datatype": "INT64", "shape": [-1]},)
    sample_in = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1.5] * 4}]}
    sample_out = {"outputs": [{"name": "Y", "shape": [1], "datatype": "INT64", "data": [2]}]}
    ready = await store.update_version(
        v1.id,
        status=VersionStatus.READY,
        reason="",
        artifact_key="models/m/1/model.onnx",
        artifact_format="onnx",
        sha256="ab" * 32,
        size_bytes=5 * 2**32,  # beyond 32 bits: BIGINT
        inputs=inputs,
        outputs=outputs,
        sample_input=sample_in,
        sample_output=sample_out,
    )
    assert ready.status is VersionStatus.READY and ready.inputs == inputs
    assert ready.outputs == outputs and ready.sample_input == sample_in
    assert ready.sample_output == sample_out and ready.size_bytes == 5 * 2**32
    assert await store.get_version_by_id(v1.id) == ready
    failed = await store.update_version(v2.id, status="failed", reason="bad file", size_bytes=7)
    assert failed.status is VersionStatus.FAILED and failed.reason == "bad file"

    assert await store.storage_used(owner.id) == 5 * 2**32 + 7
    with pytest.raises(ValueError, match="model_id"):
        await store.update_version(v1.id, model_id="x")


async def test_version_errors_and_delete(store: RegistryStore) -> None:
    owner = await _owner(store)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    with pytest.raises(NotFound, match="model not found"):
        await store.create_version("0" * 32, source="", created_by=None)
    for call in (
        store.get_version(model.id, 1),
        store.get_version_by_id("0" * 32),
        store.update_version("0" * 32, reason="x"),
        store.delete_version("0" * 32),
    ):
        with pytest.raises(NotFound, match="version not found"):
            await call

    v1 = await store.create_version(model.id, source="a", created_by=None)
    v2 = await store.create_version(model.id, source="b", created_by=None)
    await store.delete_version(v2.id)
    assert await store.list_versions(model.id) == [v1]
    # A deleted number is never handed out again: "m v2" keeps meaning the deleted artifact.
    v3 = await store.create_version(model.id, source="c", created_by=None)
    assert v3.version == 3


async def test_storage_used_counts_only_own_models(store: RegistryStore) -> None:
    alice, bob = await _owner(store, "alice"), await _owner(store, "bob")
    assert await store.storage_used(alice.id) == 0
    for owner, size in ((alice, 100), (alice, 20), (bob, 5)):
        model = await store.create_model(
            name=f"{owner.username}-{size}", owner_id=owner.id, visibility=Visibility.PUBLIC
        )
        v = await store.create_version(model.id, source="", created_by=None)
        await store.update_version(v.id, size_bytes=size)
    assert await store.storage_used(alice.id) == 120
    assert await store.storage_used(bob.id) == 5


async def test_concurrent_version_creates_get_distinct_numbers(store: RegistryStore) -> None:
    owner = await _owner(store)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    created = await asyncio.gather(
        *(store.create_version(model.id, source=f"s{i}", created_by=None) for i in range(20))
    )
    assert sorted(v.version for v in created) == list(range(1, 21))
    listed = await store.list_versions(model.id)
    assert [v.version for v in listed] == list(range(1, 21))
    assert {v.source for v in listed} == {f"s{i}" for i in range(20)}


# ---- deployments ---------------------------------------------------------------------------------


async def _model_with_versions(store: RegistryStore, n: int = 2) -> tuple[User, str]:
    owner = await _owner(store)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    for _ in range(n):
        await store.create_version(model.id, source="", created_by=None)
    return owner, model.id


async def test_deployment_lifecycle(store: RegistryStore, clock: FakeClock) -> None:
    owner, model_id = await _model_with_versions(store)
    config = DeploymentConfig(
        runtime="onnx",
        min_replicas=0,
        max_replicas=3,
        target_concurrency=8,
        scale_to_zero_after_s=300.5,
        batching={"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_ms": 2}},
        resources={"cpu": 2, "memory": 2**31, "gpu": 0},
        parameters={"threads": 1},
        instance_kind="ray",
    )
    dep = await store.create_deployment(model_id, 1, config, owner.id)
    assert dep.config == config and dep.version == 1
    assert dep.status is DeploymentStatus.DEPLOYING and dep.reason == ""
    assert (dep.generation, dep.observed_generation) == (1, 0)
    assert dep.created_by == owner.id and dep.created_at == dep.updated_at == T0
    assert await store.get_deployment(dep.id) == dep
    assert await store.find_deployment(model_id) == dep
    assert await store.list_deployments() == [dep]

    ready = await store.set_deployment_status(dep.id, DeploymentStatus.READY, "", 1)
    assert ready.status is DeploymentStatus.READY and ready.observed_generation == 1

    later = clock.advance(10)
    moved = await store.update_deployment(dep.id, version=2, config=DeploymentConfig())
    assert moved.version == 2 and moved.config == DeploymentConfig()
    assert moved.generation == 2 and moved.status is DeploymentStatus.DEPLOYING
    assert moved.reason == "" and moved.updated_at == later and moved.observed_generation == 1
    assert await store.get_deployment(dep.id) == moved

    # A late report about generation 1 must not mark the pending generation 2 ready or failed.
    stale = await store.set_deployment_status(dep.id, DeploymentStatus.FAILED, "old", 1)
    assert stale.status is DeploymentStatus.DEPLOYING and stale.reason == ""
    failed = await store.set_deployment_status(dep.id, DeploymentStatus.FAILED, "OOM", 2)
    assert failed.status is DeploymentStatus.FAILED and failed.reason == "OOM"
    assert failed.observed_generation == 2
    assert await store.get_deployment(dep.id) == failed
    with pytest.raises(ValueError, match="newer"):
        await store.set_deployment_status(dep.id, DeploymentStatus.READY, "", 3)

    again = await store.update_deployment(dep.id)  # a redeploy: only the generation moves
    assert again.generation == 3 and again.version == 2 and again.status.value == "deploying"

    await store.delete_deployment(dep.id)
    assert await store.find_deployment(model_id) is None
    assert await store.list_deployments() == []


async def test_deployment_errors(store: RegistryStore) -> None:
    _, model_id = await _model_with_versions(store)
    with pytest.raises(NotFound, match="model not found"):
        await store.create_deployment("0" * 32, 1, DeploymentConfig(), None)
    with pytest.raises(NotFound, match="version not found"):
        await store.create_deployment(model_id, 9, DeploymentConfig(), None)
    dep = await store.create_deployment(model_id, 1, DeploymentConfig(), None)
    with pytest.raises(Conflict):
        await store.create_deployment(model_id, 2, DeploymentConfig(), None)
    with pytest.raises(NotFound, match="version not found"):
        await store.update_deployment(dep.id, version=9)
    assert (await store.get_deployment(dep.id)).generation == 1  # the failed update left no trace
    for call in (
        store.get_deployment("0" * 32),
        store.update_deployment("0" * 32),
        store.set_deployment_status("0" * 32, DeploymentStatus.READY, "", 1),
        store.delete_deployment("0" * 32),
    ):
        with pytest.raises(NotFound, match="deployment not found"):
            await call
    # The deployed version cannot be deleted; another one can.
    v1 = await store.get_version(model_id, 1)
    with pytest.raises(Conflict, match="deployed"):
        await store.delete_version(v1.id)
    await store.delete_version((await store.get_version(model_id, 2)).id)
    assert [v.version for v in await store.list_versions(model_id)] == [1]


async def test_deployment_config_ignores_unknown_keys(store: RegistryStore, db: Database) -> None:
    _, model_id = await _model_with_versions(store, 1)
    dep = await store.create_deployment(model_id, 1, DeploymentConfig(max_replicas=2), None)
    # As a newer release might have written it.
    async with db.write_session() as s:
        await s.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == dep.id)
            .values(config={"max_replicas": 2, "from_the_future": True})
        )
    assert (await store.get_deployment(dep.id)).config == DeploymentConfig(max_replicas=2)


async def test_delete_model_cascades(store: RegistryStore) -> None:
    owner, model_id = await _model_with_versions(store)
    other = await store.create_model(name="other", owner_id=owner.id, visibility=Visibility.PUBLIC)
    kept = await store.create_version(other.id, source="", created_by=None)
    versions = await store.list_versions(model_id)
    dep = await store.create_deployment(model_id, 2, DeploymentConfig(), None)

    await store.delete_model(model_id)

    with pytest.raises(NotFound):
        await store.get_model(model_id)
    for v in versions:
        with pytest.raises(NotFound):
            await store.get_version_by_id(v.id)
    with pytest.raises(NotFound):
        await store.get_deployment(dep.id)
    assert await store.list_versions(model_id) == []
    assert await store.get_version_by_id(kept.id) == kept
    assert [m.name for m in await store.list_models()] == ["other"]


# ---- audit ---------------------------------------------------------------------------------------


async def test_audit_order_and_filters(store: RegistryStore, clock: FakeClock) -> None:
    entries = []
    for i, (actor, action) in enumerate(
        [("u1", "model.create"), ("u2", "model.delete"), ("u1", "model.delete"), (None, "login")]
    ):
        entries.append(
            await store.add_audit(
                actor_id=actor,
                actor_name=actor or "anonymous",
                action=action,
                target_type="model",
                target_id=f"t{i}",
                outcome="ok" if i else "denied",
                ip="10.0.0.1",
                detail={"i": i, "at": clock.now, "nested": {"a": [1, 2]}},
            )
        )
        clock.advance()
    # Two entries in the same clock tick still come back newest first.
    entries.append(
        await store.add_audit(
            actor_id="u1", actor_name="u1", action="model.create", target_type="m", target_id="t4"
        )
    )
    entries.append(
        await store.add_audit(
            actor_id="u1", actor_name="u1", action="model.create", target_type="m", target_id="t5"
        )
    )

    first = entries[0]
    assert first.outcome == "denied" and first.ip == "10.0.0.1" and first.at == T0
    assert first.detail == {"i": 0, "at": str(T0), "nested": {"a": [1, 2]}}
    assert entries[-1].detail == {} and entries[-1].outcome == "ok"

    newest_first = list(reversed(entries))
    assert await store.list_audit() == newest_first
    assert await store.list_audit(limit=2) == newest_first[:2]
    assert [e.target_id for e in await store.list_audit(actor_id="u1")] == [
        "t5",
        "t4",
        "t2",
        "t0",
    ]
    assert [e.target_id for e in await store.list_audit(action="model.delete")] == ["t2", "t1"]
    assert [e.target_id for e in await store.list_audit(actor_id="u1", action="model.delete")] == [
        "t2"
    ]
    assert [e.target_id for e in await store.list_audit(before=entries[2].at)] == ["t1", "t0"]
    assert all(_is_utc(e.at) for e in await store.list_audit())
    with pytest.raises(ValueError):
        await store.list_audit(limit=0)


# ---- secrets -------------------------------------------------------------------------------------


async def test_get_or_create_secret(store: RegistryStore) -> None:
    assert await store.get_or_create_secret("jwt", "first") == "first"
    assert await store.get_or_create_secret("jwt", "second") == "first"
    assert await store.get_or_create_secret("other", "x") == "x"


async def test_get_or_create_secret_race(db: Database) -> None:
    # Two nodes: two stores (and engines) on one database, asking at the same moment.
    other_db = Database(db.url)
    try:
        a, b = RegistryStore(db), RegistryStore(other_db)
        results = await asyncio.gather(
            *(s.get_or_create_secret("jwt", f"v{i}") for i, s in enumerate([a, b] * 5))
        )
    finally:
        await other_db.close()
    assert len(set(results)) == 1 and results[0] in {f"v{i}" for i in range(10)}


async def test_concurrent_read_then_write_transactions(store: RegistryStore) -> None:
    # Each update reads the row, then writes it. On SQLite a transaction that read first and then
    # wants the write lock after another writer committed fails outright ("database is locked")
    # unless write transactions take the lock up front.
    owner = await _owner(store)
    model = await store.create_model(name="m", owner_id=owner.id, visibility=Visibility.PUBLIC)
    await asyncio.gather(*(store.update_model(model.id, description=str(i)) for i in range(20)))
    assert (await store.get_model(model.id)).description in {str(i) for i in range(20)}
