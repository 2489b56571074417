"""Autoscaling: the pure decision (fake clock), and an engine whose replicas follow the load."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.control.supervisor import ReplicaSupervisor
from inferd.core.errors import InvalidInput
from inferd.core.scaling import AutoscalingPolicy, parse_autoscaling, parse_resources
from inferd.core.spec import parse_model_config, spec_to_config
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.autoscale import LoadHistory, desired_replicas
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelRepository
from inferd.serving.scheduler import Scheduler

POLICY = AutoscalingPolicy(min_replicas=1, max_replicas=4, target_concurrency=2,
                           downscale_delay_s=10, upscale_window_s=2)  # fmt: skip


def run(policy: AutoscalingPolicy, current: int, samples: list[tuple[float, int]], now: float,
        last_request_at: float = 0.0) -> int:  # fmt: skip
    history = LoadHistory(keep_s=60)
    for t, n in samples:
        history.add(t, n)
    return desired_replicas(policy, current, history, now, last_request_at)


def test_scales_up_at_once_to_the_load_over_target() -> None:
    assert run(POLICY, 1, [(9.0, 6), (10.0, 6)], 10.0, 10.0) == 3
    assert run(POLICY, 1, [(9.5, 100), (10.0, 100)], 10.0, 10.0) == 4  # bounded by max
    assert run(POLICY, 2, [(9.5, 3), (10.0, 4)], 10.0, 10.0) == 2  # 3.5 / 2 -> 2: no change


def test_scales_down_only_after_the_delay() -> None:
    busy_then_idle = [(float(t), 8 if t < 5 else 0) for t in range(0, 21)]
    assert run(POLICY, 4, busy_then_idle[:11], 10.0, 10.0) == 4  # high load inside the window
    assert run(POLICY, 4, busy_then_idle, 20.0, 10.0) == 1  # low for 10 s: down to min
    # not enough history yet (just started): keep what there is
    assert run(POLICY, 3, [(19.0, 0), (20.0, 0)], 20.0, 10.0) == 3


def test_scale_to_zero_and_cold_start() -> None:
    p = AutoscalingPolicy(min_replicas=0, max_replicas=2, target_concurrency=1,
                          scale_to_zero_after_s=30, downscale_delay_s=5)  # fmt: skip
    idle = [(float(t), 0) for t in range(0, 41)]
    assert run(p, 1, idle, 40.0, last_request_at=20.0) == 1  # idle 20 s < 30: keep one warm
    assert run(p, 1, idle, 40.0, last_request_at=5.0) == 0  # idle 35 s: zero
    assert run(p, 0, [*idle, (41.0, 1)], 41.0, last_request_at=41.0) == 1  # cold start


def test_policy_parsing_names_fields() -> None:
    assert parse_autoscaling({"min_replicas": 0, "max_replicas": 3}) == AutoscalingPolicy(
        0, 3, 1.0, 300.0
    )
    for raw, field in [({"min_replicas": 2, "max_replicas": 1}, "max_replicas"),
                       ({"min_replicas": 1, "scale_to_zero_after_s": 5}, "scale_to_zero_after_s"),
                       ({"target_concurrency": 0}, "target_concurrency"),
                       ({"replicas": 1}, "replicas"), ("x", "autoscaling")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=field):
            parse_autoscaling(raw)
    assert parse_resources({"memory": "512MiB", "cpu": 1.5, "gpu": 0}).memory_bytes == 2**29
    for raw, field in [({"memory": "lots"}, "memory"), ({"cpu": -1}, "cpu"),
                       ({"gpu": 1.5}, "gpu"), ({"disk": 1}, "disk")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=field):
            parse_resources(raw)
    spec = parse_model_config("m", {"autoscaling": {"min_replicas": 0, "max_replicas": 2},
                                    "resources": {"memory": "1GiB", "cpu": 2}})  # fmt: skip
    assert spec.instances == 1 and parse_model_config("m", spec_to_config(spec)) == spec
    with pytest.raises(InvalidInput, match="process replicas"):
        parse_model_config("m", {"instance_kind": "thread", "resources": {"cpu": 1}})


GATED = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            gate = parameters.get("gate")
            if gate is not None:  # held in flight until the test opens the gate
                gate.wait(60)
            return {"Y": inputs["X"] + 1}
    """
)
YAML = textwrap.dedent(
    """
    runtime: python
    instance_kind: thread
    autoscaling: {min_replicas: 0, max_replicas: 3, target_concurrency: 1,
                  scale_to_zero_after_s: 0.6, downscale_delay_s: 0.3, upscale_window_s: 0.2}
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
)


class FakeClock:
    """The supervisor's clock, moved by hand: the autoscaler's windows pass when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _request(gate: threading.Event | None = None) -> InferenceRequest:
    # thread replicas run in this process, so a request parameter can carry the gate itself
    return InferenceRequest([Tensor("X", "FP32", np.ones(2, np.float32))],
                            parameters={"gate": gate} if gate else None)  # fmt: skip


def _scalings(sched: Scheduler) -> asyncio.Queue[int]:
    """The live replica count after each scaling the autoscaler makes, in order."""
    counts: asyncio.Queue[int] = asyncio.Queue()
    scale_to = sched.scale_to

    async def recorded(n: int) -> None:
        await scale_to(n)
        counts.put_nowait(len(sched.live()))

    sched.scale_to = recorded  # type: ignore[method-assign]
    return counts


async def _next(counts: asyncio.Queue[int]) -> int:
    # the guard only turns a hang into a failure; the autoscaler runs every 0.05 s
    return await asyncio.wait_for(counts.get(), 30)


async def test_replicas_follow_the_load_to_zero_and_back(tmp_path: Path) -> None:
    (tmp_path / "slow" / "1").mkdir(parents=True)
    (tmp_path / "slow" / "1" / "model.py").write_text(GATED)
    (tmp_path / "slow" / "model.yaml").write_text(YAML)
    clock = FakeClock()
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                             supervisor=ReplicaSupervisor(clock))  # fmt: skip
    await engine.start()
    gate = threading.Event()
    try:
        sched = engine.version("slow").scheduler
        sched.autoscale_interval_s = 0.05
        counts = _scalings(sched)
        assert len(sched.live()) == 1  # loaded once to prove it works, even with min 0
        # three requests held in flight (the clock stands still): up to three replicas
        calls = [asyncio.create_task(engine.infer("slow", None, _request(gate))) for _ in range(3)]
        ups = [await _next(counts)]
        while ups[-1] < 3:
            ups.append(await _next(counts))
        assert ups == sorted(set(ups)) and ups[-1] == 3 and len(sched.live()) == 3
        gate.set()
        assert all(r.outputs[0].data.tolist() == [2.0, 2.0] for r in await asyncio.gather(*calls))
        # idle past the downscale delay, not yet past scale_to_zero_after_s: one stays warm
        clock.now = 0.4
        assert await _next(counts) == 1
        assert engine.index()[0]["state"] == "READY"
        # idle past scale_to_zero_after_s: none left, and the model is still READY
        clock.now = 0.8
        assert await _next(counts) == 0
        assert engine.index()[0]["state"] == "READY"
        # a request at zero replicas starts one and is answered
        r = await engine.infer("slow", None, _request())
        assert r.outputs[0].data.tolist() == [2.0, 2.0]
        assert await _next(counts) == 1
        assert len(sched.live()) == 1
    finally:
        gate.set()
        await engine.stop()
