"""Replicas in real worker processes: batching, isolation, healing, deadlines, back-pressure."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.control.supervisor import ReplicaSupervisor
from inferd.core.errors import (
    DeadlineExceeded,
    InferdError,
    InvalidInput,
    ModelExecutionError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ReplicaFailed,
)
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelRepository
from inferd.workers import ProcessReplica

MODEL = textwrap.dedent(
    """
    import os, time
    import numpy as np

    class Model:
        def infer(self, inputs, parameters):
            x = inputs["X"]
            time.sleep(float((parameters or {}).get("sleep", 0)))
            if (x < 0).any():
                raise ValueError("negative input")
            return {"Y": x * 2, "PID": np.full((x.shape[0],), os.getpid(), dtype=np.int64)}
    """
)


def config(**extra: str) -> str:
    lines = [
        "runtime: python",
        "max_batch_size: 16",
        "inputs: [{name: X, datatype: FP32, shape: [4]}]",
        "outputs: [{name: Y, datatype: FP32, shape: [4]}, {name: PID, datatype: INT64, shape: []}]",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture()
async def engine(tmp_path: Path) -> AsyncIterator[InferenceEngine]:
    models = {
        "batched": config(dynamic_batching="{max_queue_delay: 20ms}"),
        "pair": config(instances="2"),
        "hangs": config(execution_timeout_s="1"),
        "bounded": config(max_queue_size="2"),
    }
    for name, yaml in models.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(MODEL)
        (tmp_path / name / "model.yaml").write_text(yaml)
    eng = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                          drain_timeout_s=2, health_interval_s=0.5,
                          supervisor=ReplicaSupervisor())  # fmt: skip
    await eng.start()
    assert eng.not_ready_reason() is None, eng.index()
    yield eng
    await eng.stop()


def req(rows: np.ndarray, sleep: float = 0, timeout: float | None = None) -> InferenceRequest:
    params = {"sleep": sleep} if sleep else None
    x = np.asarray(rows, np.float32).reshape(-1, 4)
    return InferenceRequest([Tensor("X", "FP32", x)], parameters=params, timeout_s=timeout)


def pids(engine: InferenceEngine, model: str) -> list[int]:
    sched = engine.version(model).scheduler
    return [s.replica.pid for s in sched.slots if isinstance(s.replica, ProcessReplica)]  # type: ignore[misc]


async def test_concurrent_requests_are_batched_with_identical_results(
    engine: InferenceEngine,
) -> None:
    rows = [np.arange(4) + i for i in range(32)]
    results = await asyncio.gather(*(engine.infer("batched", None, req(r)) for r in rows))
    for r, res in zip(rows, results, strict=True):
        assert res.outputs[0].data.tolist() == [(r * 2).tolist()]
    alone = await engine.infer("batched", None, req(rows[3]))
    assert alone.outputs[0].data.tolist() == results[3].outputs[0].data.tolist()
    stats = engine.stats("batched")[0]
    assert stats["inference_count"] == 33
    assert stats["execution_count"] < 33, "requests must have shared executions"
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1


async def test_a_bad_request_fails_alone_in_its_batch(engine: InferenceEngine) -> None:
    good = [engine.infer("batched", None, req(np.arange(4) + i)) for i in range(6)]
    bad = engine.infer("batched", None, req([-1, 0, 0, 0]))
    malformed = engine.infer("batched", None, InferenceRequest(
        [Tensor("X", "FP32", np.zeros((1, 5), np.float32))]))  # fmt: skip
    results = await asyncio.gather(*good, bad, malformed, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results[:6]), results
    assert isinstance(results[6], ModelExecutionError) and "negative input" in results[6].message
    assert isinstance(results[7], InvalidInput)


async def test_sigkill_under_load_every_request_answered_and_replica_back(
    engine: InferenceEngine,
) -> None:
    before = pids(engine, "pair")
    assert len(before) == 2
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                await engine.infer("pair", None, req(np.ones(4), sleep=0.01))
                outcomes.append("ok")
            except ReplicaFailed as e:
                assert "SIGKILL" in e.message
                outcomes.append("replica_failed")

    clients = [asyncio.create_task(client()) for _ in range(6)]
    await asyncio.sleep(0.5)
    os.kill(before[0], signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), 10)  # no request hangs
    assert outcomes.count("ok") > 20
    assert outcomes.count("replica_failed") <= 1  # only the request the dead worker held
    while engine.version("pair").scheduler.health().healthy < 2:
        assert time.monotonic() - killed_at < 5, "replica not replaced"
        await asyncio.sleep(0.05)
    after = pids(engine, "pair")
    assert before[0] not in after and before[1] in after
    assert engine.version("pair").scheduler.health().restarts == 1
    res = await engine.infer("pair", None, req(np.ones(4)))
    assert res.outputs[0].data.tolist() == [[2.0] * 4]
    text = engine.metrics.render().decode()
    assert 'inferd_replica_restarts_total{model="pair",version="1"} 1.0' in text


async def test_sigkill_of_an_idle_replica_is_healed(engine: InferenceEngine) -> None:
    """Killed while its loop waits for work: replaced without any request arriving."""
    sched = engine.version("pair").scheduler
    sched.health_interval_s = 0.2
    await asyncio.sleep(0.3)  # let the loops pick up the short interval
    victim = pids(engine, "pair")[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sched.health().restarts < 1 or sched.health().healthy < 2:
        assert time.monotonic() < deadline, "idle replica not replaced"
        await asyncio.sleep(0.05)
    assert victim not in pids(engine, "pair")
    res = await engine.infer("pair", None, req(np.ones(4)))
    assert res.outputs[0].data.tolist() == [[2.0] * 4]


async def test_hung_replica_is_replaced(engine: InferenceEngine) -> None:
    start = time.monotonic()
    with pytest.raises(ReplicaFailed, match="did not answer within 1 s"):
        await engine.infer("hangs", None, req(np.ones(4), sleep=30))
    assert time.monotonic() - start < 5
    res = await asyncio.wait_for(engine.infer("hangs", None, req(np.ones(4))), 20)
    assert res.outputs[0].data.tolist() == [[2.0] * 4]


async def test_deadline_exceeded_and_slot_freed(engine: InferenceEngine) -> None:
    slow = asyncio.create_task(engine.infer("bounded", None, req(np.ones(4), 0.6, timeout=0.2)))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(engine.infer("bounded", None, req(np.ones(4), 0, timeout=0.1)))
    with pytest.raises(DeadlineExceeded, match="while running"):
        await slow
    with pytest.raises(DeadlineExceeded, match="before it started"):
        await queued
    res = await asyncio.wait_for(engine.infer("bounded", None, req(np.ones(4))), 5)
    assert res.outputs[0].data.tolist() == [[2.0] * 4]
    assert engine.stats("bounded")[0]["inference_count"] == 1  # the dropped one never ran


async def test_full_queue_refused_at_once(engine: InferenceEngine) -> None:
    running = asyncio.create_task(engine.infer("bounded", None, req(np.ones(4), 0.5)))
    await asyncio.sleep(0.1)
    queued = [asyncio.create_task(engine.infer("bounded", None, req(np.ones(4)))) for _ in range(2)]
    await asyncio.sleep(0.01)
    start = time.monotonic()
    with pytest.raises(Overloaded, match="max_queue_size 2"):
        await engine.infer("bounded", None, req(np.ones(4)))
    assert time.monotonic() - start < 0.1
    for task in (running, *queued):
        assert (await task).outputs[0].data.tolist() == [[2.0] * 4]


async def test_unload_load_races_do_not_crash(engine: InferenceEngine) -> None:
    async def traffic() -> list[str]:
        seen = []
        for _ in range(40):
            try:
                await engine.infer("pair", None, req(np.ones(4)))
                seen.append("ok")
            except (ModelNotReady, ModelNotFound, ReplicaFailed) as e:
                seen.append(type(e).__name__)
            await asyncio.sleep(0.005)
        return seen

    async def churn() -> None:
        for _ in range(3):
            await asyncio.gather(engine.unload("pair"), engine.load("pair"), return_exceptions=True)
            await engine.load("pair")

    seen, _ = await asyncio.wait_for(asyncio.gather(traffic(), churn()), 60)
    assert "ok" in seen
    assert set(seen) <= {"ok", "ModelNotReady", "ModelNotFound", "ReplicaFailed"}
    await engine.load("pair")
    assert engine.model("pair").state == "READY"
    res = await engine.infer("pair", None, req(np.ones(4)))
    assert res.outputs[0].data.tolist() == [[2.0] * 4]
    assert not isinstance(res, InferdError)


async def test_reload_to_a_new_version_under_load_fails_nothing(
    engine: InferenceEngine, tmp_path: Path
) -> None:
    versions: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                versions.append((await engine.infer("pair", None, req(np.ones(4)))).model_version)
            except InferdError as e:
                failures.append(e)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.2)
    (tmp_path / "pair" / "2").mkdir()
    (tmp_path / "pair" / "2" / "model.py").write_text(MODEL)
    await engine.load("pair")
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    assert versions[0] == "1" and versions[-1] == "2"
    assert [e["version"] for e in engine.index() if e["name"] == "pair"] == ["2"]


async def test_index_reports_replica_counts(engine: InferenceEngine) -> None:
    entry = next(e for e in engine.index() if e["name"] == "pair")
    assert entry["replicas"] == {"total": 2, "healthy": 2, "restarts": 0, "queued": 0}
