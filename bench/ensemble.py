"""What an ensemble or a pipeline costs over calling its models directly.

A repository of small ONNX models in worker processes, `scale` (FP32 [N,4] times 1), `dense`
(FP32 [N,4] -> Gemm -> [N,3]) and `mlp` (bench/models.py's reference MLP, [N,32] -> 4 x Gemm 512
-> [N,10]), the ensembles `ens1` (dense) and `ens2` (scale -> dense, in sequence), and the
pipeline `pipe`: validate -> standardize -> mlp -> softmax -> top_k, the shape of a real
serving graph (cheap processing around one model). Two measurements, interleaved round by round:

1. In process, at concurrency 1, on the server's own event loop: `ens2` through
   `DataPlane.infer` against its two steps called directly one after the other
   (`DataPlane.infer(scale)` then `DataPlane.infer(dense)`): the difference over the number
   of steps is the ensemble's own cost per step (validation, wiring, the step requests), with no
   HTTP around either. Same for `ens1` against `dense`, and `pipe` against `mlp`.
2. Over HTTP with wrk from the other core (the server and its workers on CPU 0), c=1 and c=8,
   V2 JSON: `dense` alone, `ens1`, `ens2`, `mlp` alone, `pipe`: infer/s, p50 and server CPU
   per request.

`bench/models.py` must have built bench/out/models (bench/setup.sh does).

    .venv/bin/python bench/ensemble.py --rounds 5 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson

ADMIN_KEY = "inferd_BenchAdm_" + "b" * 43


def _onnx(path: Path, kind: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])
    if kind == "scale":
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4])
        init = [numpy_helper.from_array(np.ones(4, dtype=np.float32), "W")]
        nodes = [helper.make_node("Mul", ["X", "W"], ["Y"])]
    else:
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])
        init = [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W"),
                numpy_helper.from_array(np.zeros(3, dtype=np.float32), "B")]  # fmt: skip
        nodes = [helper.make_node("Gemm", ["X", "W", "B"], ["Y"])]
    graph = helper.make_graph(nodes, kind, [x], [y], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (path / kind / "1").mkdir(parents=True)
    onnx.save(model, str(path / kind / "1" / "model.onnx"))
    (path / kind / "model.yaml").write_text("max_batch_size: 8\n")


ENSEMBLES = {
    "ens1": [("dense", "X", "Y", "OUT")],
    "ens2": [("scale", "X", "Y", "mid"), ("dense", "X", "Y", "OUT")],
}


PIPE = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}],
    "outputs": [{"name": "output_labels", "datatype": "BYTES", "shape": [-1, 3]}],
    "root": "main",
    "nodes": {"main": {"kind": "sequence", "steps": [
        {"processor": "validate", "config": {"rules": {"input": {"min": -10, "max": 10}}}},
        {"processor": "standardize", "config": {"mean": 0.0, "std": 1.0}},
        {"model": "mlp"},
        {"processor": "softmax"},
        {"processor": "top_k", "config": {"k": 3, "labels": [f"c{i}" for i in range(10)]}},
    ]}},
}  # fmt: skip


def _repository(root: Path) -> None:
    import shutil

    import yaml

    _onnx(root, "scale")
    _onnx(root, "dense")
    mlp = Path(__file__).resolve().parent / "out" / "models" / "inferd" / "mlp"
    shutil.copytree(mlp, root / "mlp")
    (root / "pipe" / "1").mkdir(parents=True)
    (root / "pipe" / "model.yaml").write_text(
        yaml.safe_dump({"platform": "pipeline", "pipeline": PIPE})
    )
    for name, steps in ENSEMBLES.items():
        lines, src = [], "IN"
        for model, step_in, step_out, tensor in steps:
            lines.append(f"    - {{model_name: {model}, input_map: {{{step_in}: {src}}}, "
                         f"output_map: {{{step_out}: {tensor}}}}}")  # fmt: skip
            src = tensor
        (root / name / "1").mkdir(parents=True)
        (root / name / "model.yaml").write_text(textwrap.dedent("""\
            platform: ensemble
            max_batch_size: 8
            inputs: [{name: IN, datatype: FP32, shape: [4]}]
            outputs: [{name: OUT, datatype: FP32, shape: [3]}]
            ensemble_scheduling:
              step:
            """) + "\n".join(lines) + "\n")  # fmt: skip


def _in_process(models: Path, data: Path, rounds: int, calls: int) -> None:
    """Per-step cost of an ensemble over its steps called directly: a server built in this
    process (not listening), its engine started on this thread's event loop."""
    from inferd.app import build
    from inferd.core.tensors import InferenceRequest, Tensor
    from inferd.settings import Settings

    x = np.random.default_rng(1).random((1, 4), dtype=np.float32)
    points = {
        "ens1": [("ens1", "IN")], "dense": [("dense", "X")],
        "ens2": [("ens2", "IN")], "scale+dense": [("scale", "X"), ("dense", "X")],
        "pipe": [("pipe", "input")], "mlp": [("mlp", "input")],
    }  # fmt: skip
    x32 = np.random.default_rng(2).random((1, 32), dtype=np.float32)

    async def measure() -> dict[str, list[float]]:
        server = build(Settings(model_repository=models, data_dir=data, grpc={"enabled": False},
                                log_level="warning"))  # fmt: skip
        await server.engine.start()
        plane = server.asgi.plane
        try:
            us: dict[str, list[float]] = {}
            for r in range(rounds):
                for name, names in points.items():
                    svs = [(plane.version(model), inp) for model, inp in names]
                    row = x32 if name in ("pipe", "mlp") else x
                    for _ in range(calls if r == 0 else calls // 10):  # warm-up
                        for sv, inp in svs:
                            await plane.infer(sv, InferenceRequest([Tensor(inp, "FP32", row)]))
                    t0 = time.perf_counter_ns()
                    for _ in range(calls):
                        for sv, inp in svs:
                            await plane.infer(sv, InferenceRequest([Tensor(inp, "FP32", row)]))
                    us.setdefault(name, []).append((time.perf_counter_ns() - t0) / calls / 1000)
            return us
        finally:
            await server.engine.stop()

    med = {k: statistics.median(v) for k, v in asyncio.run(measure()).items()}
    print("| in process, c=1 | µs per request | ensemble minus its steps called directly, "
          "per step (µs) |")  # fmt: skip
    print("|---|---|---|")
    for name, steps, direct in (("ens1", 1, "dense"), ("ens2", 2, "scale+dense"),
                                ("pipe", 5, "mlp")):  # fmt: skip
        print(f"| {name} | {med[name]:.1f} | {(med[name] - med[direct]) / steps:+.1f} |")
        print(f"| {direct} (direct) | {med[direct]:.1f} | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,8")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import loadgen

    from inferd import serve

    os.sched_setaffinity(0, {0})  # the server and its workers on CPU 0, wrk on CPU 1
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-ensemble-"))
    _repository(scratch / "models")
    os.environ["INFERD_AUTH__BOOTSTRAP_KEY"] = ADMIN_KEY
    _in_process(scratch / "models", scratch / "inproc", args.rounds, args.calls)
    server = serve(model_repository=scratch / "models", http_port=0, block=False,
                   data_dir=scratch / "data", grpc={"enabled": False}, log_level="warning",
                   http={"access_log": False})  # fmt: skip
    assert server is not None
    try:
        bodies = {}
        for name, inp, width in (("dense", "X", 4), ("ens1", "IN", 4), ("ens2", "IN", 4),
                                 ("mlp", "input", 32), ("pipe", "input", 32)):  # fmt: skip
            row = [round(0.1 * (i % 7), 2) for i in range(width)]
            path = scratch / f"{name}.json"
            path.write_bytes(orjson.dumps({"inputs": [
                {"name": inp, "datatype": "FP32", "shape": [1, width], "data": row}]}))  # fmt: skip
            bodies[name] = path
        concs = [int(c) for c in args.concurrency.split(",")]
        p50: dict[tuple[str, int], list[float]] = {}
        rate: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for i in range(args.rounds):
            for c in concs:
                for name, body in bodies.items():
                    url = f"{server.url}/v2/models/{name}/infer"
                    loadgen.run_load(url, body, c, 2.0 if i == 0 else 0.5, 0, "wrk", 1)
                    before = os.times()
                    r = loadgen.run_load(url, body, c, args.duration, 0, "wrk", 1)
                    after = os.times()
                    assert r.errors == 0, r
                    used = (after.user - before.user) + (after.system - before.system)
                    p50.setdefault((name, c), []).append(r.p50_ms * 1000)
                    rate.setdefault((name, c), []).append(r.infer_per_s)
                    cpu.setdefault((name, c), []).append(used / max(r.requests, 1) * 1e6)
        print()
        print("| model | c | infer/s | vs its model alone | p50 µs | server CPU µs/req |")
        print("|---|---|---|---|---|---|")
        for c in concs:
            for name in bodies:
                alone = "mlp" if name in ("mlp", "pipe") else "dense"
                base = statistics.median(rate[(alone, c)])
                r = statistics.median(rate[(name, c)])
                print(f"| {name} | {c} | {r:,.0f} | {r / base:.2f} | "
                      f"{statistics.median(p50[(name, c)]):.0f} | "
                      f"{statistics.median(cpu[(name, c)]):.0f} |")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
