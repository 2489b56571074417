"""The engine over a real repository folder with real replicas (threads), no sockets."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.control.supervisor import ReplicaSupervisor
from inferd.core.errors import (
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ReplicaFailed,
)
from inferd.core.spec import parse_model_config
from inferd.core.tensors import InferenceRequest, RequestedOutput, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.runtimes.object import ObjectRuntime
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelRepository

YAML = textwrap.dedent(
    """
    runtime: python
    instance_kind: thread
    version_policy: {policy}
    inputs: [{{name: X, datatype: FP32, shape: [-1]}}]
    outputs: [{{name: Y, datatype: FP32, shape: [-1]}}]
    """
)


def model_py(factor: float) -> str:
    return textwrap.dedent(
        f"""
        class Model:
            def infer(self, inputs, parameters):
                x = inputs["X"]
                if (x < 0).any():
                    raise RuntimeError("negative values are not allowed")
                return {{"Y": x * {factor}}}
        """
    )


def write_model(root: Path, name: str, versions: dict[str, str], policy: str = "latest") -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "model.yaml").write_text(YAML.format(policy=policy))
    for v, code in versions.items():
        (root / name / v).mkdir(exist_ok=True)
        (root / name / v / "model.py").write_text(code)


def request(*values: float, **kw: object) -> InferenceRequest:
    return InferenceRequest([Tensor("X", "FP32", np.array(values, np.float32))], **kw)  # type: ignore[arg-type]


def engine_for(root: Path) -> InferenceEngine:
    return InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(root),
                           drain_timeout_s=1, supervisor=ReplicaSupervisor())  # fmt: skip


async def test_start_loads_all_and_keeps_failures_with_reasons(tmp_path: Path) -> None:
    write_model(tmp_path, "double", {"1": model_py(2)})
    write_model(tmp_path, "bad", {"1": "raise ImportError('cannot import this')"})
    engine = engine_for(tmp_path)
    await engine.start()
    try:
        out = await engine.infer("double", None, request(1, 2, id="r"))
        assert out.id == "r" and out.model_version == "1"
        np.testing.assert_array_equal(out.outputs[0].data, [2, 4])
        bad = engine.model("bad")
        assert bad.state == "UNAVAILABLE" and "cannot import this" in bad.reason
        assert "bad" in (engine.not_ready_reason() or "")
        with pytest.raises(ModelNotReady, match="cannot import this"):
            await engine.infer("bad", None, request(1))
        with pytest.raises(ModelNotFound):
            await engine.infer("nope", None, request(1))
    finally:
        await engine.stop()


async def test_reload_swaps_versions_and_failed_reload_keeps_old(tmp_path: Path) -> None:
    write_model(tmp_path, "m", {"1": model_py(2)})
    engine = engine_for(tmp_path)
    await engine.start()
    try:
        assert engine.not_ready_reason() is None
        write_model(tmp_path, "m", {"2": model_py(3)})
        await engine.load("m")
        out = await engine.infer("m", None, request(1))
        assert out.model_version == "2" and out.outputs[0].data.tolist() == [3.0]
        with pytest.raises(ModelNotFound):
            await engine.infer("m", "1", request(1))  # latest policy: only version 2 served

        write_model(tmp_path, "m", {"3": "this is not python"})
        with pytest.raises(ModelLoadError, match="version 3"):
            await engine.load("m")
        out = await engine.infer("m", None, request(1))
        assert out.model_version == "2"  # the old version keeps serving
        assert engine.model("m").reason.startswith("reload failed")
        assert engine.not_ready_reason() is None
    finally:
        await engine.stop()


async def test_version_policy_all_and_explicit_versions(tmp_path: Path) -> None:
    write_model(tmp_path, "m", {"1": model_py(2), "2": model_py(5)}, policy="all")
    engine = engine_for(tmp_path)
    await engine.start()
    try:
        assert (await engine.infer("m", "1", request(1))).outputs[0].data.tolist() == [2.0]
        assert (await engine.infer("m", "2", request(1))).outputs[0].data.tolist() == [5.0]
        assert (await engine.infer("m", None, request(1))).model_version == "2"
        assert [e["version"] for e in engine.index()] == ["1", "2"]
    finally:
        await engine.stop()


async def test_unload_then_requests_are_not_ready(tmp_path: Path) -> None:
    write_model(tmp_path, "m", {"1": model_py(2)})
    engine = engine_for(tmp_path)
    await engine.start()
    await engine.unload("m")
    with pytest.raises(ModelNotReady):
        await engine.infer("m", None, request(1))
    assert engine.index() == [{"name": "m", "version": "", "state": "UNAVAILABLE",
                               "reason": "unloaded"}]  # fmt: skip
    assert engine.not_ready_reason() is None  # an unloaded model no longer gates readiness
    await engine.stop()


GATED = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            # thread replicas run in this process: the request carries the gate it waits on
            parameters["gate"].wait(60)
            return {"Y": inputs["X"]}
    """
)


async def test_unload_and_drain_wait_for_the_request_in_flight(tmp_path: Path) -> None:
    write_model(tmp_path, "held", {"1": GATED})
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                             drain_timeout_s=60, supervisor=ReplicaSupervisor())  # fmt: skip
    await engine.start()
    gate = threading.Event()
    try:
        call = asyncio.create_task(
            engine.infer("held", None, request(1, parameters={"gate": gate}))
        )
        while engine.inflight == 0:
            await asyncio.sleep(0)
        unloading = asyncio.create_task(engine.unload("held"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not unloading.done() and not await engine.drained(0)
        gate.set()
        assert (await call).outputs[0].data.tolist() == [1.0]  # answered, not cut off
        await unloading
        assert await engine.drained(0) and engine.model("held").state == "UNAVAILABLE"
    finally:
        gate.set()
        await engine.stop()


async def test_a_replica_that_times_out_is_replaced_by_the_supervisor(tmp_path: Path) -> None:
    write_model(tmp_path, "stuck", {"1": GATED})
    yaml = (tmp_path / "stuck" / "model.yaml").read_text()
    (tmp_path / "stuck" / "model.yaml").write_text(yaml + "execution_timeout_s: 0.2\n")
    engine = engine_for(tmp_path)
    await engine.start()
    stuck, free = threading.Event(), threading.Event()
    free.set()
    try:
        with pytest.raises(ReplicaFailed, match=r"did not finish within 0\.2 s"):
            await engine.infer("stuck", None, request(1, parameters={"gate": stuck}))
        # the next request waits for the replacement (no request could run without one)
        out = await asyncio.wait_for(
            engine.infer("stuck", None, request(2, parameters={"gate": free})), 30
        )
        assert out.outputs[0].data.tolist() == [2.0]
        health = engine.version("stuck").scheduler.health()
        assert (health.total, health.healthy, health.restarts) == (1, 1, 1)
        assert "did not finish within 0.2 s" in health.last_error
    finally:
        stuck.set()
        await engine.stop()


async def test_errors_and_stats(tmp_path: Path) -> None:
    write_model(tmp_path, "m", {"1": model_py(2)})
    engine = engine_for(tmp_path)
    await engine.start()
    try:
        with pytest.raises(ModelExecutionError, match="negative values are not allowed"):
            await engine.infer("m", None, request(-1))
        bad = InferenceRequest([Tensor("X", "FP64", np.array([1.0]))])
        with pytest.raises(InvalidInput, match="FP64"):
            await engine.infer("m", None, bad)
        with pytest.raises(InvalidInput, match="duplicate"):
            await engine.infer("m", None, request(1, outputs=[RequestedOutput("Y")] * 2))
        await engine.infer("m", None, request(1))
        stats = engine.stats("m")[0]
        assert stats["inference_count"] == 1 and stats["execution_count"] == 1
        assert stats["inference_stats"]["fail"]["count"] == 3
        text = engine.metrics.render().decode()
        assert 'reason="model_error"' in text and 'reason="invalid_input"' in text
    finally:
        await engine.stop()


async def test_python_objects_and_estimators() -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    est = LogisticRegression(max_iter=500).fit(x, y)
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), supervisor=ReplicaSupervisor())
    spec = parse_model_config("iris", {"labels": ["setosa", "versicolor", "virginica"]})
    await engine.add_model(spec, ObjectRuntime(spec, est))
    try:
        rows = x[[0, 100]].astype(np.float32)
        wanted = [
            RequestedOutput("predict"),
            RequestedOutput("predict_proba", {"classification": 1}),
        ]
        req = InferenceRequest([Tensor("input", "FP32", rows)], outputs=wanted)
        out = await engine.infer("iris", None, req)
        assert out.outputs[0].data.tolist() == est.predict(rows).tolist()
        top = [s.decode().split(":") for s in out.outputs[1].data.ravel()]
        assert [t[2] for t in top] == ["setosa", "virginica"]
        np.testing.assert_allclose(
            [float(t[0]) for t in top], est.predict_proba(rows).max(axis=1), rtol=1e-5
        )
    finally:
        await engine.stop()
