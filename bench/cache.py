"""The response cache against the model call it saves: `InferenceEngine.infer_version` on a
trivial python model in a worker process (32 FP32 values in, the same out), for

- `no cache`: a model without `response_cache` (queue + worker round trip: what a hit saves),
- `miss`: the model with `response_cache: {enable: true}`, every request new (the model runs,
  plus key, lookup and storing the answer),
- `hit`: the same model, the same request again (memory backend),
- `hit (redis)`: the same with the Redis backend, when Redis answers at 127.0.0.1:6379,
- `key only`: `cache_key` of the request, and of a 1 MiB FP32 input.

Each figure is the median of 5 round medians of 1,000 calls (µs per call). Pin it to one core,
as bench/run.py does, so that the server side and the worker share it:

    taskset -c 0 .venv/bin/python bench/cache.py
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import uvloop
from prometheus_client import CollectorRegistry

from inferd.core.spec import TensorSpec
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelRepository
from inferd.serving.response_cache import cache_key, open_response_cache

MODEL = (
    "class Model:\n    def infer(self, inputs, parameters):\n        return {'Y': inputs['X']}\n"
)
YAML = """runtime: python
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: Y, datatype: FP32, shape: [-1]}]
"""
REDIS = "redis://127.0.0.1:6379/0"
ROUNDS, CALLS = 5, 1000


def repository() -> Path:
    root = Path(tempfile.mkdtemp(prefix="inferd-cache-bench-"))
    for name, extra in (("plain", ""), ("cached", "response_cache: {enable: true}\n")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MODEL)
        (root / name / "model.yaml").write_text(YAML + extra)
    return root


def request(value: float) -> InferenceRequest:
    return InferenceRequest([Tensor("X", "FP32", np.full(32, value, np.float32))])


async def measure(call: Callable[[int], Awaitable[object]]) -> float:
    """Median of the round medians, µs per call."""
    for i in range(200):
        await call(-1 - i)
    medians = []
    n = 0
    for _ in range(ROUNDS):
        times = []
        for _ in range(CALLS):
            n += 1
            t0 = time.perf_counter_ns()
            await call(n)
            times.append(time.perf_counter_ns() - t0)
        medians.append(statistics.median(times) / 1000)
    return statistics.median(medians)


async def engine_figures(root: Path, redis_prefix: str | None) -> dict[str, float]:
    cache = (
        open_response_cache("redis", 0, 1 << 20, REDIS, redis_prefix, 60)
        if redis_prefix
        else open_response_cache("memory", 64 << 20, 1 << 20, None, "bench", None)
    )
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(root),
                             response_cache=cache)  # fmt: skip
    await engine.start()
    try:
        plain, cached = engine.version("plain"), engine.version("cached")
        same = request(1.0)
        out: dict[str, float] = {}
        if redis_prefix is None:
            out["no cache"] = await measure(lambda i: engine.infer_version(plain, same))
            out["miss"] = await measure(lambda i: engine.infer_version(cached, request(i)))
        await engine.infer_version(cached, same)
        label = "hit (redis)" if redis_prefix else "hit"
        out[label] = await measure(lambda i: engine.infer_version(cached, same))
        stats = engine.stats("cached")[0]["inference_stats"]
        assert stats["cache_hit"]["count"] >= ROUNDS * CALLS, stats
        return out
    finally:
        await engine.stop()


def key_figures() -> dict[str, float]:
    specs = {"X": TensorSpec("X", "FP32", (-1,))}
    small = {"X": np.ones(32, np.float32)}
    large = {"X": np.ones(1 << 18, np.float32)}
    out = {}
    for label, inputs in (("key only, 128 B input", small), ("key only, 1 MiB input", large)):
        times = []
        for _ in range(2000):
            t0 = time.perf_counter_ns()
            cache_key("cached", "1", inputs, specs, None, {"timeout": 1000})
            times.append(time.perf_counter_ns() - t0)
        out[label] = statistics.median(times) / 1000
    return out


def redis_up() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(REDIS, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


async def main() -> None:
    root = repository()
    prefix = f"inferd-bench-{uuid.uuid4().hex[:12]}"
    try:
        figures = await engine_figures(root, None)
        if redis_up():
            figures |= await engine_figures(root, prefix)
        figures |= key_figures()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if redis_up():
            import redis

            client = redis.Redis.from_url(REDIS)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()
    for label, us in figures.items():
        print(f"{label:>24}: {us:8.1f} µs per call")
    if "hit" in figures:
        print(f"{'hit / no cache':>24}: {figures['hit'] / figures['no cache']:8.2f}")


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
