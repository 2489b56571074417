"""Many models on the GPUs of one server under a per-GPU memory budget: a real server, real
worker processes.

This machine has no GPU, so the GPUs are named in the settings (`serving.gpus: [0, 1]`) with a
budget given as a size, which is how a server where NVML cannot see the GPUs is configured; no
GPU memory is measured here, so each model declares what it holds (`resources.gpu_memory`).
What is checked is everything the server decides and does: where each model is placed (each
worker reports the `CUDA_VISIBLE_DEVICES` it was started with, which is what a CUDA runtime
would use), that no GPU ever holds more than its budget, that only models on the GPU short of
room are unloaded (a host-only model stays), and that every request succeeds.
"""

from __future__ import annotations

import random
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from inferd import serve
from inferd.runner import RunningServer
from tests.conftest import ADMIN
from tests.integration.test_memory_budget_server import metrics, value

GPU_MODELS = [f"g{i}" for i in range(6)]
PER_GPU = 2  # 1 GiB per GPU, 400 MiB per model

CODE = textwrap.dedent(
    """
    import os

    class Model:
        def infer(self, inputs, parameters):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "none")
            order = os.environ.get("CUDA_DEVICE_ORDER", "")
            gpu = float(visible) if visible.isdigit() and order == "PCI_BUS_ID" else -1.0
            return {"Y": inputs["X"] + %d, "GPU": inputs["X"] * 0 + gpu}
    """
)
YAML = textwrap.dedent(
    """
    runtime: python
    trusted: true
    %s
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs: [{name: Y, datatype: FP32, shape: [-1]}, {name: GPU, datatype: FP32, shape: [-1]}]
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("gpu-budget-repo")
    models = {name: "resources: {gpu: 1, gpu_memory: 400MiB}" for name in GPU_MODELS}
    models["host"] = ""  # asks for no GPU: never placed, never in the way of a GPU load
    models["huge"] = "resources: {gpu: 1, gpu_memory: 2GiB}"
    models["pair"] = "resources: {gpu: 2, gpu_memory: 300MiB}"
    for i, (name, resources) in enumerate(models.items()):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(CODE % i)
        (root / name / "model.yaml").write_text(YAML % resources)
    running = serve(
        model_repository=Path(root),
        http_port=0,
        block=False,
        grpc={"enabled": False},
        serving={"gpu_memory_budget": "1GiB", "gpus": [0, 1], "load_wait_s": 30},
        log_level="warning",
    )
    assert running is not None
    with running:
        yield running


@pytest.fixture()
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as c:
        yield c


def infer(client: httpx.Client, name: str) -> tuple[float, list[float]]:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    answer = client.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, (name, answer.text)
    out = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    return out["Y"][0], out["GPU"]


def test_gpu_models_spread_over_the_gpus_and_never_exceed_a_gpu_budget(
    client: httpx.Client, server: RunningServer
) -> None:
    assert infer(client, "host")[1] == [-1.0]  # not placed: sees what the server sees
    order = GPU_MODELS * 4
    random.Random(11).shuffle(order)
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as c:
            while not stop.is_set():
                m = metrics(c)
                samples.append({f"{k}{g}": value(m, k, gpu=g) for g in ("0", "1")
                                for k in ("inferd_gpu_models_loaded",
                                          "inferd_gpu_memory_used_bytes")})  # fmt: skip
                time.sleep(0.02)

    watcher = threading.Thread(target=sampler)
    watcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda name: (name, infer(client, name)), order))
    finally:
        stop.set()
        watcher.join()
    placed: dict[float, set[str]] = {}
    for name, (y, gpu) in answers:
        assert y == 1.0 + GPU_MODELS.index(name)
        assert gpu[0] in (0.0, 1.0), (name, gpu)  # started on exactly one of the two GPUs
        placed.setdefault(gpu[0], set()).add(name)
    assert set(placed) == {0.0, 1.0}  # both GPUs used
    assert len(samples) > 10
    for g in ("0", "1"):
        assert max(s[f"inferd_gpu_models_loaded{g}"] for s in samples) <= PER_GPU
        assert max(s[f"inferd_gpu_memory_used_bytes{g}"] for s in samples) <= 2**30
    m = metrics(client)
    assert value(m, "inferd_gpu_memory_budget_bytes", gpu="0") == 2**30
    evictions = sum(value(m, "inferd_model_evictions_total", model=n) for n in GPU_MODELS)
    assert evictions >= len(GPU_MODELS) - 2 * PER_GPU
    # the host-only model was never in the way: loaded once, never unloaded
    assert value(m, "inferd_model_evictions_total", model="host") == 0
    assert value(m, "inferd_model_loads_total", model="host", outcome="success") == 1


def test_a_model_on_two_gpus_sees_both(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    answer = client.post("/v2/models/pair/infer", json=body)
    assert answer.status_code == 200, answer.text
    m = metrics(client)
    # 300 MiB reserved on each GPU, beside at most one 400 MiB model per GPU
    for g in ("0", "1"):
        assert value(m, "inferd_gpu_memory_used_bytes", gpu=g) <= 2**30
        assert value(m, "inferd_gpu_models_loaded", gpu=g) >= 1


def test_a_model_larger_than_a_gpu_budget_gets_503_with_the_reason(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    answer = client.post("/v2/models/huge/infer", json=body)
    assert answer.status_code == 503
    assert "more than the whole budget of GPU" in answer.json()["error"]
