"""A stopped worker process (SIGSTOP, a debugger) is found by its process state within
`liveness_timeout_s`, not at `execution_timeout_s` (left at its default 60 s here): its request
fails with the reason, it is killed and replaced, and the queue keeps being served. A model that
is slow but runs — sleeping, or holding the GIL in C — is left alone."""

from __future__ import annotations

import asyncio
import contextlib
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
from inferd.core.errors import ModelLoadError, ReplicaFailed
from inferd.core.spec import parse_model_config
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelRepository
from inferd.serving.scheduler import Scheduler
from inferd.workers import ProcessReplica, limits
from inferd.workers.generation_process import ProcessGenerator

MODEL = textwrap.dedent(
    """
    import ctypes, os, time
    import numpy as np

    class Model:
        def infer(self, inputs, parameters):
            parameters = parameters or {}
            time.sleep(float(parameters.get("sleep", 0)))
            if parameters.get("hold_gil"):
                # blocks in C with the GIL held: no other thread of this process can run
                ctypes.PyDLL(None).sleep(int(parameters["hold_gil"]))
            x = inputs["X"]
            return {"Y": x * 2, "PID": np.full((x.shape[0],), os.getpid(), dtype=np.int64)}
    """
)


def config(instances: int, liveness_timeout_s: float) -> str:
    return "\n".join([
        "runtime: python",
        "max_batch_size: 16",
        f"instances: {instances}",
        f"liveness_timeout_s: {liveness_timeout_s}",
        "inputs: [{name: X, datatype: FP32, shape: [4]}]",
        "outputs: [{name: Y, datatype: FP32, shape: [4]}, {name: PID, datatype: INT64, shape: []}]",
    ])  # fmt: skip


@pytest.fixture()
async def engine(tmp_path: Path) -> AsyncIterator[InferenceEngine]:
    models = {"pair": config(2, 1), "single": config(1, 1), "slow": config(2, 0.5)}
    for name, yaml in models.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(MODEL)
        (tmp_path / name / "model.yaml").write_text(yaml)
    # the default idle health interval (5 s): the pings must not be what finds the stopped worker
    eng = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                          drain_timeout_s=2, supervisor=ReplicaSupervisor())  # fmt: skip
    await eng.start()
    assert eng.not_ready_reason() is None, eng.index()
    yield eng
    await eng.stop()


def req(**params: float) -> InferenceRequest:
    x = np.ones((1, 4), np.float32)
    return InferenceRequest([Tensor("X", "FP32", x)], parameters=dict(params) or None)


def pids(sched: Scheduler) -> list[int]:
    return [s.replica.pid for s in sched.slots if isinstance(s.replica, ProcessReplica)]  # type: ignore[misc]


async def stop_a_busy_worker(sched: Scheduler) -> int:
    """SIGSTOP the worker of a replica that is running a request (its frame is already sent)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for slot in sched.slots:
            if slot.busy and isinstance(slot.replica, ProcessReplica) and slot.replica.pid:
                os.kill(slot.replica.pid, signal.SIGSTOP)
                return slot.replica.pid
        await asyncio.sleep(0.002)
    raise AssertionError("no replica became busy")


async def gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while limits.process_state(pid) is not None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def kill_if_stopped(pid: int) -> None:
    """Never leave a stopped worker behind when an assertion fails."""
    if limits.process_state(pid) == "T":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def is_stop_reason(message: str, pid: int) -> bool:
    return "stopped responding" in message and f"worker process {pid} " in message


async def test_stopped_busy_replica_fails_its_request_fast_and_the_queue_is_served(
    engine: InferenceEngine,
) -> None:
    sched = engine.version("pair").scheduler
    before = pids(sched)
    ok: list[int] = []
    failures: list[tuple[str, float]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                res = await engine.infer("pair", None, req(sleep=0.05))
                ok.append(int(res.outputs[1].data[0]))
            except ReplicaFailed as e:
                failures.append((e.message, time.monotonic()))

    clients = [asyncio.create_task(client()) for _ in range(6)]  # 4 queued at any time
    await asyncio.sleep(0.3)
    victim = await stop_a_busy_worker(sched)
    stopped_at = time.monotonic()
    at_stop = len(ok)
    try:
        while not failures:
            assert time.monotonic() - stopped_at < 5, "the stopped worker's request still waits"
            await asyncio.sleep(0.02)
        served_before = len(ok)
        while sched.health().restarts < 1 or sched.health().healthy < 2:
            assert time.monotonic() - stopped_at < 20, "stopped replica not replaced"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the replacement takes work too
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 10)  # nothing hangs
    finally:
        stop.set()
        kill_if_stopped(victim)
    assert len(failures) == 1, failures  # only the request the stopped worker held
    message, failed_at = failures[0]
    assert is_stop_reason(message, victim) and "liveness_timeout_s" in message, message
    assert failed_at - stopped_at < 5  # execution_timeout_s is 60 s
    assert served_before > at_stop  # the other replica kept serving the queue meanwhile
    assert len(ok) > served_before
    assert await gone(victim)
    after = pids(sched)
    assert victim not in after and len(after) == 2
    assert set(ok) - {victim} <= set(before) | set(after)
    assert is_stop_reason(sched.health().last_error, victim)


async def test_single_stopped_replica_is_replaced_and_serves_the_queue(
    engine: InferenceEngine,
) -> None:
    sched = engine.version("single").scheduler
    running = asyncio.create_task(engine.infer("single", None, req(sleep=0.3)))
    victim = await stop_a_busy_worker(sched)
    stopped_at = time.monotonic()
    try:
        queued = [asyncio.create_task(engine.infer("single", None, req())) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert sched.health().queued == 5
        with pytest.raises(ReplicaFailed) as err:
            await asyncio.wait_for(running, 10)
        assert time.monotonic() - stopped_at < 5
        assert is_stop_reason(err.value.message, victim), err.value.message
        results = await asyncio.wait_for(asyncio.gather(*queued), 20)
    finally:
        kill_if_stopped(victim)
    (replacement,) = pids(sched)
    assert replacement != victim
    assert [int(r.outputs[1].data[0]) for r in results] == [replacement] * 5
    assert await gone(victim)
    assert sched.health().restarts == 1


async def test_slow_model_that_runs_is_not_killed(engine: InferenceEngine) -> None:
    """2 s calls with liveness_timeout_s 0.5: one sleeps, one blocks in C holding the GIL (a
    heartbeat thread inside the worker would starve there; the process state does not)."""
    sched = engine.version("slow").scheduler
    before = pids(sched)
    start = time.monotonic()
    results = await asyncio.gather(
        engine.infer("slow", None, req(sleep=2)), engine.infer("slow", None, req(hold_gil=2))
    )
    assert time.monotonic() - start >= 2
    assert sorted(int(r.outputs[1].data[0]) for r in results) == sorted(before)
    assert pids(sched) == before and sched.health().restarts == 0


async def test_generator_worker_stopped_while_loading_fails_the_load_fast(
    tmp_path: Path,
) -> None:
    """The generation worker has the same watch (the stop lands before it reads its load frame,
    so no model is needed)."""
    spec = parse_model_config("gen", {"runtime": "llm", "liveness_timeout_s": 0.5})
    gen = ProcessGenerator(spec, "1", tmp_path, "gen-1-0")
    loading = asyncio.create_task(gen.load())
    while gen._proc is None:
        await asyncio.sleep(0)
    victim = gen._proc.pid
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        with pytest.raises(ModelLoadError) as err:
            await asyncio.wait_for(loading, 10)  # the load timeout is 600 s
    finally:
        kill_if_stopped(victim)
    assert time.monotonic() - stopped_at < 5
    assert is_stop_reason(err.value.message, victim), err.value.message
    assert await gone(victim)
