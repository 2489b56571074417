"""One process replica's round trip: `ProcessReplica.infer` on a trivial python model (32 FP32
values in, the same out), 10 rounds of 1,000 calls one after another; prints the median of the
round medians, the best round median, and the CPU time both processes spent per call (server and
worker, from /proc: on a machine with noisy neighbours whole rounds run slow, and CPU time is the
steadier figure). Pin it to one core so that the server side and the worker share it, as in
bench/run.py; run two trees one after the other with PYTHONPATH:

    PYTHONPATH=/tmp/a/src taskset -c 0 .venv/bin/python bench/worker_roundtrip.py a
    PYTHONPATH=/tmp/b/src taskset -c 0 .venv/bin/python bench/worker_roundtrip.py b
"""

from __future__ import annotations

import asyncio
import os
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


def worker_cpu_ns(pid: int | None) -> int:
    """User + system CPU time of process `pid`, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


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
        medians, cpu = [], []
        for _ in range(10):
            times = []
            c0 = time.process_time_ns() + worker_cpu_ns(replica.pid)
            for _ in range(1000):
                t0 = time.perf_counter_ns()
                await replica.infer(x, None, None)
                times.append(time.perf_counter_ns() - t0)
            medians.append(statistics.median(times) / 1000)
            cpu.append((time.process_time_ns() + worker_cpu_ns(replica.pid) - c0) / 1000 / 1000)
        rounds = ", ".join(f"{m:.1f}" for m in medians)
        print(f"{label}: {statistics.median(medians):.1f} µs, best round {min(medians):.1f} µs, "
              f"CPU {statistics.median(cpu):.1f} µs per call (rounds {rounds})")  # fmt: skip
    finally:
        await replica.unload()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "inferd"))
