"""Build the benchmark models and request bodies, deterministically, for every server.

Run with the project's interpreter (it needs numpy, onnx, onnxruntime, scikit-learn, skops,
joblib):

    .venv/bin/python bench/models.py [--out bench/out]

Writes, under OUT:

- ``models/inferd/<m>/1/model.{onnx,skops}``        inferd model repository
- ``models/mlserver/<m>/{model.onnx|model.joblib, model-settings.json}``
- ``models/kserve/<m>/{model.onnx|model.joblib}``
- ``bodies/<m>.v2.json``, ``bodies/<m>.v1.json``    request bodies (one row)
- ``bodies/<m>.expected.json``                      reference outputs for the correctness check

Models:

- ``mlp``: the DESIGN.md reference model, FP32 ``input`` [N,32] -> 4 x (Gemm 512 + ReLU) ->
  Gemm -> FP32 ``output`` [N,10]; weights from a fixed seed, built with ``onnx.helper``.
- ``iris``: ``LogisticRegression`` on the iris data set that scikit-learn ships; one trained
  estimator is written as skops (inferd) and joblib (MLServer, KServe).
- ``wide`` (dynamic batching benchmark, inferd only): FP32 ``input`` [N,256] -> 3 x (Gemm 2048 +
  ReLU) -> Gemm -> FP32 ``output`` [N,10], ~36 MB of weights, so one row costs ~1.3 ms on one
  core (memory-bound) while 32 rows cost ~5 ms. Written as two inferd models,
  ``models/batching/wide_unbatched`` and ``models/batching/wide_batched`` (``bench/batching.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "out"
MODELS = ("mlp", "iris")

MLP_IN = 32
MLP_HIDDEN = 512
MLP_LAYERS = 4
MLP_OUT = 10
SEED = 20240601
# onnxruntime's default intra-op pool pins one thread per physical core, escaping `taskset`:
# one thread keeps every server (and the in-process figure) on its one core.
ORT_THREADS = 1


WIDE_IN = 256
WIDE_HIDDEN = 2048
WIDE_LAYERS = 3


def build_mlp_onnx() -> bytes:
    """The 4x512 ReLU MLP as serialized ONNX bytes (opset 17, IR 8 for older runtimes)."""
    return _relu_mlp_onnx([MLP_IN] + [MLP_HIDDEN] * MLP_LAYERS + [MLP_OUT], "mlp_4x512", SEED)


def build_wide_onnx() -> bytes:
    """The batching benchmark's 3x2048 ReLU MLP (input 256 wide) as serialized ONNX bytes."""
    dims = [WIDE_IN] + [WIDE_HIDDEN] * WIDE_LAYERS + [MLP_OUT]
    return _relu_mlp_onnx(dims, "wide_3x2048", SEED + 2)


def _relu_mlp_onnx(dims: list[int], graph_name: str, seed: int) -> bytes:
    """Gemm+ReLU layers of widths ``dims``, He-initialised from ``seed``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []
    inits = []
    prev = "input"
    for i in range(len(dims) - 1):
        fan_in, fan_out = dims[i], dims[i + 1]
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(dims) - 2
        gemm_out = "output" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inferd-bench"
    )
    model.ir_version = 8
    import onnx

    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def train_iris() -> Any:
    """A deterministic iris classifier (LogisticRegression: a ~tens-of-µs predict)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=1000).fit(x.astype(np.float32), y)


def mlp_row() -> list[float]:
    """The one input row sent to the MLP (rounded so every JSON encoder writes the same)."""
    rng = np.random.default_rng(SEED + 1)
    return [round(float(v), 4) for v in rng.standard_normal(MLP_IN)]


IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def wide_row() -> list[float]:
    """The one input row sent to the ``wide`` model."""
    rng = np.random.default_rng(SEED + 3)
    return [round(float(v), 4) for v in rng.standard_normal(WIDE_IN)]


def grpc_request(model: str) -> bytes:
    """A serialized ``inference.ModelInferRequest`` for one row, as tritonclient sends it
    (tensor bytes in ``raw_input_contents``); the same inputs and outputs as the V2 JSON body."""
    from tritonclient.grpc import service_pb2 as pb

    body = v2_body(model)
    req = pb.ModelInferRequest(model_name=model)
    for t in body["inputs"]:
        tensor = req.inputs.add(name=t["name"], datatype=t["datatype"])
        tensor.shape.extend(t["shape"])
        req.raw_input_contents.append(np.asarray(t["data"], dtype="<f4").tobytes())
    for o in body.get("outputs", []):
        req.outputs.add(name=o["name"])
    return bytes(req.SerializeToString())


def v2_body(model: str) -> dict[str, Any]:
    """The V2 JSON request body for one row."""
    if model == "mlp":
        row = mlp_row()
        tensor = {"name": "input", "shape": [1, MLP_IN], "datatype": "FP32", "data": row}
        return {"inputs": [tensor]}
    return {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }


def v1_body(model: str) -> dict[str, Any]:
    """The KServe V1 ``{"instances": ...}`` body for one row."""
    return {"instances": [mlp_row() if model == "mlp" else IRIS_ROW]}


def expected_outputs(model: str, onnx_bytes: bytes, estimator: Any) -> dict[str, list[Any]]:
    """Reference outputs computed in-process, flattened, keyed by output name."""
    if model == "mlp":
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        x = np.asarray([mlp_row()], dtype=np.float32)
        return {"output": sess.run(None, {"input": x})[0].ravel().tolist()}
    x = np.asarray([IRIS_ROW], dtype=np.float32)
    return {
        "predict": estimator.predict(x).ravel().tolist(),
        "predict_proba": estimator.predict_proba(x).ravel().tolist(),
    }


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def write_inferd_onnx_threads(models: Path, threads: int) -> None:
    """inferd's ``model.yaml`` for ``mlp``: onnxruntime intra-op threads (0: its default).

    The peers read the same number from ``BENCH_ORT_THREADS`` (``bench/run.py`` sets both).
    """
    path = models / "inferd" / "mlp" / "model.yaml"
    if threads > 0:
        _write(path, f"parameters:\n  intra_op_threads: {threads}\n  inter_op_threads: 1\n")
    elif path.exists():
        path.unlink()


def _mlserver_settings(name: str, implementation: str, uri: str) -> str:
    settings = {"name": name, "implementation": implementation, "parameters": {"uri": uri}}
    return json.dumps(settings, indent=2) + "\n"


def build(out: Path = DEFAULT_OUT) -> Path:
    """Write every artifact and body under ``out``; returns ``out/models``."""
    import joblib
    import skops.io

    onnx_bytes = build_mlp_onnx()
    est = train_iris()
    models = out / "models"

    # inferd: a model repository, runtime detected from the file.
    _write(models / "inferd" / "mlp" / "1" / "model.onnx", onnx_bytes)
    write_inferd_onnx_threads(models, ORT_THREADS)
    skops_path = models / "inferd" / "iris" / "1" / "model.skops"
    skops_path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(est, skops_path)

    # MLServer: custom onnxruntime class for the MLP, mlserver-sklearn for iris.
    _write(models / "mlserver" / "mlp" / "model.onnx", onnx_bytes)
    _write(
        models / "mlserver" / "mlp" / "model-settings.json",
        _mlserver_settings("mlp", "mlserver_onnx.OnnxModel", "./model.onnx"),
    )
    (models / "mlserver" / "iris").mkdir(parents=True, exist_ok=True)
    joblib.dump(est, models / "mlserver" / "iris" / "model.joblib")
    _write(
        models / "mlserver" / "iris" / "model-settings.json",
        _mlserver_settings("iris", "mlserver_sklearn.SKLearnModel", "./model.joblib"),
    )

    # KServe: custom kserve.Model classes (bench/peers/kserve_server.py) read these.
    _write(models / "kserve" / "mlp" / "model.onnx", onnx_bytes)
    (models / "kserve" / "iris").mkdir(parents=True, exist_ok=True)
    joblib.dump(est, models / "kserve" / "iris" / "model.joblib")

    bodies = out / "bodies"
    for m in MODELS:
        _write(bodies / f"{m}.v2.json", json.dumps(v2_body(m), separators=(",", ":")))
        _write(bodies / f"{m}.v1.json", json.dumps(v1_body(m), separators=(",", ":")))
        _write(bodies / f"{m}.grpc.bin", grpc_request(m))
        exp = expected_outputs(m, onnx_bytes, est)
        _write(bodies / f"{m}.expected.json", json.dumps(exp))
    build_wide(out)
    return models


def build_wide(out: Path = DEFAULT_OUT) -> Path:
    """The ``wide`` model (ONNX), its one-row V2 body and reference output; returns the file.

    ``bench/batching.py`` writes the two inferd model folders (with their ``model.yaml``) that
    serve this file.
    """
    import onnxruntime as ort

    onnx_bytes = build_wide_onnx()
    path = out / "models" / "wide" / "model.onnx"
    _write(path, onnx_bytes)
    row = wide_row()
    tensor = {"name": "input", "shape": [1, WIDE_IN], "datatype": "FP32", "data": row}
    _write(out / "bodies" / "wide.v2.json", json.dumps({"inputs": [tensor]}, separators=(",", ":")))
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": np.asarray([row], dtype=np.float32)})[0]
    _write(out / "bodies" / "wide.expected.json", json.dumps({"output": got.ravel().tolist()}))
    return path


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (bench/out)")
    args = ap.parse_args()
    models = build(args.out)
    print(f"models written under {models}")


if __name__ == "__main__":
    main()
