"""One process replica's round trip: `ProcessReplica.infer` on a trivial python model (32 FP32
values in, the same out), 5 rounds of 1,000 calls one after another; prints the median of the
round medians in µs. Pin it to one core so that the server side and the worker share it, as in
bench/run.py; run two trees one after the other with PYTHONPATH:

    PYTHONPATH=/tmp/a/src taskset -c 0 .venv/bin/python bench/worker_roundtrip.py a
    PYTHONPATH=/tmp/b/src taskset -c 0 .venv/bin/python bench/worker_roundtrip.py b
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import uvloop

from inferd.core.spec import parse_model_config
from inferd.workers import ProcessReplica

MODEL = (
    "class Model:\n    def infer(self, inputs, parameters):\n        return {'Y': inputs['X']}\n"
)
CONFIG = {"runtime": "python",
          "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
          "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1]}]}  # fmt: skip


async def main(label: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="inferd-rt-")) / "m"
    (root / "1").mkdir(parents=True)
    (root / "1" / "model.py").write_text(MODEL)
    replica = ProcessReplica(parse_model_config("m", CONFIG), "1", root / "1", "python", "m-1-0")
    await replica.load()
    x = {"X": np.ones(32, dtype=np.float32)}
    try:
        for _ in range(200):
            await replica.infer(x, None, None)
        medians = []
        for _ in range(5):
            times = []
            for _ in range(1000):
                t0 = time.perf_counter_ns()
                await replica.infer(x, None, None)
                times.append(time.perf_counter_ns() - t0)
            medians.append(statistics.median(times) / 1000)
        rounds = ", ".join(f"{m:.1f}" for m in medians)
        print(f"{label}: {statistics.median(medians):.1f} µs (rounds {rounds})")
    finally:
        await replica.unload()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "inferd"))
