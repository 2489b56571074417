"""Resource limits on real worker processes: CPU pinning, GPU hiding, memory limit."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.control.supervisor import ReplicaSupervisor
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelRepository

PROBE = textwrap.dedent(
    """
    import os
    import numpy as np

    HOARD = []

    class Model:
        def infer(self, inputs, parameters):
            HOARD.append(np.ones(int(parameters.get("hoard_mb", 0)) * 2**20, np.uint8))
            cpus = sorted(os.sched_getaffinity(0))
            env = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            threads = os.environ.get("OMP_NUM_THREADS", "unset")
            return {"CPUS": np.array(cpus, np.int64),
                    "ENV": np.array([env.encode(), threads.encode()], object)}
    """
)


def _model(root: Path, name: str, resources: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(PROBE)
    (root / name / "model.yaml").write_text(textwrap.dedent(f"""
        runtime: python
        trusted: true
        required: false
        resources: {resources}
        inputs: [{{name: X, datatype: FP32, shape: [-1]}}]
        outputs: [{{name: CPUS, datatype: INT64, shape: [-1]}},
                  {{name: ENV, datatype: BYTES, shape: [-1]}}]
        """))  # fmt: skip


def _request(hoard_mb: int = 0) -> InferenceRequest:
    return InferenceRequest([Tensor("X", "FP32", np.ones(1, np.float32))],
                            parameters={"hoard_mb": hoard_mb})  # fmt: skip


async def test_cpu_pinning_gpu_hiding_and_memory_limit(tmp_path: Path) -> None:
    _model(tmp_path, "pinned", "{cpu: 1, gpu: 0, memory: 300MiB}")
    _model(tmp_path, "tiny", "{memory: 5MiB}")
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                             supervisor=ReplicaSupervisor())  # fmt: skip
    await engine.start()
    try:
        # a worker whose model alone exceeds its memory limit fails to load, with the reason
        index = {m["name"]: m for m in engine.index()}
        assert index["tiny"]["state"] == "UNAVAILABLE"
        assert "out of memory" in index["tiny"]["reason"]
        assert "memory limit of 5 MiB" in index["tiny"]["reason"]

        r = await engine.infer("pinned", None, _request())
        out = {t.name: t.data for t in r.outputs}
        usable = sorted(os.sched_getaffinity(0))
        assert out["CPUS"].tolist() == usable[:1]
        assert out["ENV"].tolist() == [b"", b"1"]

        # growing past the limit: this answer stands, then the worker is replaced with a reason
        sched = engine.version("pinned").scheduler
        await engine.infer("pinned", None, _request(hoard_mb=400))
        for _ in range(200):
            if sched.slots[0].restarts == 1:
                break
            await asyncio.sleep(0.05)
        assert sched.slots[0].restarts == 1
        assert "over its memory limit of 300 MiB" in sched.slots[0].last_error
        r = await engine.infer("pinned", None, _request())  # the replacement serves
        assert {t.name for t in r.outputs} == {"CPUS", "ENV"}
    finally:
        await engine.stop()


ENV_PROBE = textwrap.dedent(
    """
    import os
    import numpy as np

    class Model:
        def infer(self, inputs, parameters):
            names = sorted(os.environ)
            return {"NAMES": np.array([n.encode() for n in names], object)}
    """
)


async def test_worker_processes_do_not_see_server_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERD_REGISTRY__S3_SECRET_KEY", "s3-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("PGPASSWORD", "pg-secret")
    monkeypatch.setenv("HARMLESS_SETTING", "1")
    (tmp_path / "env" / "1").mkdir(parents=True)
    (tmp_path / "env" / "1" / "model.py").write_text(ENV_PROBE)
    (tmp_path / "env" / "model.yaml").write_text(textwrap.dedent("""
        runtime: python
        trusted: true
        inputs: [{name: X, datatype: FP32, shape: [-1]}]
        outputs: [{name: NAMES, datatype: BYTES, shape: [-1]}]
        """))  # fmt: skip
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                             supervisor=ReplicaSupervisor())  # fmt: skip
    await engine.start()
    try:
        r = await engine.infer("env", None, _request())
        names = {n.decode() for n in r.outputs[0].data.tolist()}
        # an allow-list: what the worker needs (PATH), not whatever the server was given
        assert "PATH" in names and "HARMLESS_SETTING" not in names
        leaked = {n for n in names if n.startswith(("INFERD_", "AWS_", "PG"))}
        assert leaked == set()
    finally:
        await engine.stop()
