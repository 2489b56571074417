"""The raw in-process cost of each benchmark model call, with no server around it.

- ``mlp``: ``onnxruntime.InferenceSession.run`` on the same FP32 [1,32] row the servers get
  (intra-op threads from ``BENCH_ORT_THREADS``, default 1, as the servers; ``--cpu 0`` pins).
- ``iris``: scikit-learn ``predict`` + ``predict_proba`` on the same [1,4] row (the two outputs
  every server is asked for).

Each round times ``--calls`` back-to-back calls one by one (``perf_counter_ns``) after a
warm-up; the figure is the median of the per-round medians. Per-request server overhead is then
``server p50 at concurrency 1 - this``.

    taskset -c 0 .venv/bin/python bench/inprocess.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from models import DEFAULT_OUT, IRIS_ROW, mlp_row  # noqa: E402


def _mlp_call(models: Path) -> Callable[[], Any]:
    threads = int(os.environ.get("BENCH_ORT_THREADS", "1"))
    import onnxruntime as ort

    opts = ort.SessionOptions()  # as the servers: see README "onnxruntime threads"
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    path = models / "inferd" / "mlp" / "1" / "model.onnx"
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": np.asarray([mlp_row()], dtype=np.float32)}
    return lambda: sess.run(None, feed)


def _iris_call(models: Path) -> Callable[[], Any]:
    import joblib

    est = joblib.load(models / "kserve" / "iris" / "model.joblib")
    x = np.asarray([IRIS_ROW], dtype=np.float32)
    return lambda: (est.predict(x), est.predict_proba(x))


CALLS: dict[str, Callable[[Path], Callable[[], Any]]] = {"mlp": _mlp_call, "iris": _iris_call}


def measure(fn: Callable[[], Any], calls: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Median (and spread) of per-call wall time in microseconds over ``rounds`` rounds."""
    for _ in range(warmup):
        fn()
    medians = []
    p99s = []
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - t0)
        times.sort()
        medians.append(times[len(times) // 2] / 1000)
        p99s.append(times[int(len(times) * 0.99)] / 1000)
    return {
        "median_us": statistics.median(medians),
        "round_medians_us": [round(m, 2) for m in medians],
        "p99_us": statistics.median(p99s),
        "calls_per_round": calls,
        "rounds": rounds,
    }


def run(
    models: list[str], out: Path = DEFAULT_OUT, calls: int = 3000, rounds: int = 3
) -> dict[str, dict[str, Any]]:
    """Measure every model in ``models``; returns model -> figures."""
    root = out / "models"
    return {m: measure(CALLS[m](root), calls, rounds, warmup=calls // 5) for m in models}


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(CALLS), help="comma list (mlp,iris)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where models.py wrote")
    ap.add_argument("--calls", type=int, default=3000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=-1, help="pin this process to a CPU (-1: no)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    res = run([m for m in args.models.split(",") if m], args.out, args.calls, args.rounds)
    if args.json:
        print(json.dumps(res))
        return
    for m, r in res.items():
        print(f"{m}: median {r['median_us']:.1f} µs (rounds {r['round_medians_us']})")


if __name__ == "__main__":
    main()
