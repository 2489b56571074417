"""Batch job bookkeeping: chunks recorded in order by the node holding the lease, a job resumed
by another node from the first chunk not recorded after its node died, every row in the output
exactly once and in input order; a node that lost the job records nothing; cancel keeps what
was stored. In-process: SQLite in a file, artifacts in a folder, rows answered by a fake plane."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from inferd.auth.principal import Principal
from inferd.control.batch_input import prepare
from inferd.control.batch_runner import BatchRunner, input_key, part_key
from inferd.core.records import BatchJob, BatchStatus, Role
from inferd.core.spec import TensorSpec
from inferd.observability.batches import BatchMetrics
from inferd.registry.artifacts import LocalArtifactStore
from inferd.registry.db import Database, sqlite_url
from inferd.registry.store import RegistryStore
from inferd.settings import BatchSettings

LEASE = timedelta(seconds=30)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Plane:
    """Answers `{"x": n}` with `{"y": 2n}`; rows from `hang_from` on wait until cancelled."""

    def __init__(self, hang_from: int | None = None) -> None:
        self.hang_from = hang_from
        self.seen: list[int] = []

    async def run(
        self, api: str, p: Principal, model: str, version: str | None, body: dict[str, Any],
        request_id: str,
    ) -> tuple[int, dict[str, Any], None]:  # fmt: skip
        n = body["x"]
        self.seen.append(n)
        if self.hang_from is not None and n >= self.hang_from:
            await asyncio.Event().wait()
        return 200, {"y": 2 * n}, None

    def signature(self, model: str, version: str | None) -> tuple[tuple[TensorSpec, ...], int]:
        return (), 0


@pytest.fixture
async def world(tmp_path: Path) -> Any:
    db = Database(sqlite_url(tmp_path / "registry.db"))
    await db.migrate()
    clock = Clock()
    store = RegistryStore(db, clock=clock)
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    owner = await store.create_user("owner", None, Role.MEMBER)
    yield store, artifacts, clock, owner.id
    await db.close()


async def _job(store: RegistryStore, artifacts: LocalArtifactStore, owner: str, rows: int,
               chunk_rows: int, openai: bool = False) -> BatchJob:  # fmt: skip
    data = b"\n".join(orjson.dumps({"x": i}) for i in range(rows))
    prepared = prepare(data, "jsonl", chunk_rows)
    job = BatchJob(id="batch_t1", owner_id=owner, model="m", api="v2", endpoint="",
                   input_file_id="file-in", format="jsonl", status=BatchStatus.IN_PROGRESS,
                   total=prepared.total, done=0, failed=0, chunk_rows=chunk_rows,
                   chunks=len(prepared.chunks), committed=0, openai=openai,
                   created_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    for i, blob in enumerate(prepared.chunks):
        await artifacts.put_bytes(input_key(job.id, i), blob)
    return await store.create_batch(job)


def _runner(store: RegistryStore, artifacts: LocalArtifactStore, node: str,
            plane: Plane) -> BatchRunner:  # fmt: skip
    settings = BatchSettings(chunk_rows=10, max_in_flight=4, lease_s=30)
    runner = BatchRunner(store, artifacts, settings, BatchMetrics(CollectorRegistry()), node)
    runner.rows = plane
    return runner


async def _output(artifacts: LocalArtifactStore, store: RegistryStore, job_id: str) -> list[Any]:
    job = await store.get_batch(job_id)
    assert job.output_file_id is not None
    f = await store.get_file(job.output_file_id)
    blobs = [await artifacts.get_bytes(part_key(f.key, i)) for i in range(f.parts)]
    assert f.bytes == sum(len(b) for b in blobs)
    return [orjson.loads(line) for line in b"".join(blobs).splitlines()]


async def _until(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_a_job_whose_node_died_resumes_elsewhere_from_its_last_chunk(world: Any) -> None:
    store, artifacts, clock, owner = world
    job = await _job(store, artifacts, owner, rows=95, chunk_rows=10)
    first = _runner(store, artifacts, "node-a", Plane(hang_from=42))
    claimed = await store.claim_batch("node-a", LEASE)
    assert claimed is not None and claimed.node == "node-a"
    task = asyncio.create_task(first._run(claimed))

    async def four_recorded() -> bool:
        return (await store.get_batch(job.id)).committed == 4

    await _until(four_recorded)
    await asyncio.sleep(0.05)
    task.cancel()  # the node dies: no end written, its lease still held
    await asyncio.gather(task, return_exceptions=True)
    assert await store.claim_batch("node-b", LEASE) is None  # held until the lease runs out
    clock.now += LEASE + timedelta(seconds=1)
    resumed = await store.claim_batch("node-b", LEASE)
    assert resumed is not None and resumed.committed == 4 and resumed.done == 40
    # the dead node, had it lived on, could not record anything any more
    assert await store.commit_chunk(job.id, "node-a", 4, 10, 0, LEASE) is None
    plane = Plane()
    second = _runner(store, artifacts, "node-b", plane)
    await second._run(resumed)
    done = await store.get_batch(job.id)
    assert done.status == BatchStatus.COMPLETED and (done.done, done.failed) == (95, 0)
    assert done.node is None and done.completed_at is not None
    assert min(plane.seen) == 40 and len(plane.seen) == 55  # only what was not recorded
    lines = await _output(artifacts, store, job.id)
    assert [line["response"]["body"]["y"] for line in lines] == [2 * i for i in range(95)]
    assert [line["id"] for line in lines] == [f"batch_req_t1_{i}" for i in range(95)]
    assert not await artifacts.exists(input_key(job.id, 0))  # its input is dropped at the end


async def test_cancel_keeps_what_was_stored(world: Any) -> None:
    store, artifacts, _, owner = world
    job = await _job(store, artifacts, owner, rows=50, chunk_rows=10, openai=True)
    runner = _runner(store, artifacts, "node-a", Plane(hang_from=25))
    claimed = await store.claim_batch("node-a", LEASE)
    assert claimed is not None
    runner._running[job.id] = task = asyncio.create_task(runner._run(claimed))

    async def two_recorded() -> bool:
        return (await store.get_batch(job.id)).committed == 2

    await _until(two_recorded)
    assert (await store.cancel_batch(job.id)).status == BatchStatus.CANCELLING
    runner.cancel(job.id)
    await task
    ended = await store.get_batch(job.id)
    assert ended.status == BatchStatus.CANCELLED and ended.done == 20
    assert ended.error_file_id is None  # no row failed
    lines = await _output(artifacts, store, job.id)
    assert [line["custom_id"] for line in lines] == [None] * 20
    assert [line["response"]["body"]["y"] for line in lines] == [2 * i for i in range(20)]


async def test_a_job_nobody_ran_is_cancelled_at_once(world: Any) -> None:
    store, artifacts, _, owner = world
    job = await _job(store, artifacts, owner, rows=5, chunk_rows=10)
    cancelled = await store.cancel_batch(job.id)
    assert cancelled.status == BatchStatus.CANCELLED and cancelled.cancelled_at is not None
    assert await store.claim_batch("node-a", LEASE) is None
    # a chunk is recorded once, by its holder only
    assert await store.commit_chunk(job.id, "node-a", 0, 5, 0, LEASE) is None


async def test_a_disabled_owners_job_fails(world: Any) -> None:
    store, artifacts, _, owner = world
    job = await _job(store, artifacts, owner, rows=5, chunk_rows=10)
    await store.update_user(owner, disabled=True)
    plane = Plane()
    claimed = await store.claim_batch("node-a", LEASE)
    assert claimed is not None
    await _runner(store, artifacts, "node-a", plane)._run(claimed)
    ended = await store.get_batch(job.id)
    assert ended.status == BatchStatus.FAILED and "disabled" in ended.error
    assert plane.seen == [] and ended.output_file_id is None
