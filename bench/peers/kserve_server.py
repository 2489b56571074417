"""KServe ``ModelServer`` serving the benchmark models through custom ``kserve.Model`` classes.

KServe ships no Python ONNX runtime and its ``sklearnserver`` is not on PyPI, so both models are
small ``kserve.Model`` subclasses written as KServe's own servers are (``sklearnserver``'s
``SKLearnModel`` is the model): ``load()`` sets ``ready``; ``predict()`` takes a V2
``InferRequest`` or a V1 dict and returns an ``InferResponse`` / ``{"predictions": ...}``.

    python bench/peers/kserve_server.py --model_dir bench/out/models/kserve --http_port 18200 \
        --enable_grpc false --enable_latency_logging false --workers 1

Per-request logging is switched off (uvicorn's access log and KServe's ``kserve.trace`` timing
lines: their loggers are set above INFO); everything else is KServe's default.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import joblib
import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import generate_uuid


def _requested(payload: InferRequest, default: list[str]) -> list[str]:
    if payload.request_outputs:
        return [o.name for o in payload.request_outputs]
    return default


def _output(name: str, arr: np.ndarray, binary: bool) -> InferOutput:
    out = InferOutput(name=name, shape=list(arr.shape), datatype=_v2_type(arr))
    out.set_data_from_numpy(arr, binary_data=binary)
    return out


def _v2_type(arr: np.ndarray) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}[
        arr.dtype.name
    ]


class OnnxModel(kserve.Model):
    """``model.onnx`` via onnxruntime; intra-op threads from ``BENCH_ORT_THREADS`` (default 1)."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        """Create the onnxruntime session."""
        opts = ort.SessionOptions()
        threads = int(os.environ.get("BENCH_ORT_THREADS", "1"))  # README "onnxruntime threads"
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest | dict[str, Any], headers: dict[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        """V2: every input by name; V1: ``instances`` as the single input."""
        assert self.session is not None
        if isinstance(payload, dict):
            x = np.asarray(payload["instances"], dtype=np.float32)
            return {"predictions": self.session.run(None, {self.input_name: x})[0].tolist()}
        feed = {i.name: i.as_numpy().astype(np.float32, copy=False) for i in payload.inputs}
        wanted = _requested(payload, self.output_names)
        results = self.session.run(wanted, feed)
        binary = payload.use_binary_outputs
        return InferResponse(
            response_id=payload.id or generate_uuid(),
            model_name=self.name,
            infer_outputs=[_output(n, r, binary) for n, r in zip(wanted, results, strict=True)],
        )


class SklearnModel(kserve.Model):
    """A joblib scikit-learn estimator; outputs ``predict`` and/or ``predict_proba``."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.estimator: Any = None

    def load(self) -> bool:
        """Unpickle the estimator (trusted: the benchmark wrote it)."""
        self.estimator = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest | dict[str, Any], headers: dict[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        """V2 returns the requested outputs (default both); V1 returns ``predict``."""
        if isinstance(payload, dict):
            x = np.asarray(payload["instances"], dtype=np.float32)
            return {"predictions": self.estimator.predict(x).tolist()}
        x = payload.inputs[0].as_numpy()
        wanted = _requested(payload, ["predict", "predict_proba"])
        binary = payload.use_binary_outputs
        outs = [_output(n, np.asarray(getattr(self.estimator, n)(x)), binary) for n in wanted]
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outs
        )


def build_models(model_dir: Path) -> list[kserve.Model]:
    """One model per sub-folder of ``model_dir``: ``model.onnx`` or ``model.joblib``."""
    models: list[kserve.Model] = []
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        if (sub / "model.onnx").exists():
            models.append(OnnxModel(sub.name, sub / "model.onnx"))
        elif (sub / "model.joblib").exists():
            models.append(SklearnModel(sub.name, sub / "model.joblib"))
    for m in models:
        m.load()
    return models


def main() -> None:
    """Parse KServe's own arguments plus ``--model_dir`` and start the server."""
    ap = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    ap.add_argument("--model_dir", type=Path, required=True)
    args, _ = ap.parse_known_args()
    models = build_models(args.model_dir)
    server = kserve.ModelServer()
    # Per-request logs off: uvicorn skips its access log when this logger is above INFO, and
    # KServe's always-on TimingMiddleware logs two lines per request on ``kserve.trace``.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start(models)


if __name__ == "__main__":
    main()
