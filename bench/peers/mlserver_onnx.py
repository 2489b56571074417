"""A minimal MLServer runtime that serves an ONNX file with onnxruntime.

MLServer ships no Python ONNX runtime, so the benchmark gives it this one, written the way
MLServer's own runtimes are (``mlserver_sklearn.SKLearnModel`` is the model): decode with the
NumPy codec, run, encode with the NumPy codec. Referenced from ``model-settings.json`` as
``mlserver_onnx.OnnxModel`` (``bench/peers`` is put on ``PYTHONPATH`` by ``bench/run.py``).
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """Runs ``model.onnx``; intra-op threads from ``BENCH_ORT_THREADS`` (default 1)."""

    async def load(self) -> bool:
        """Create the onnxruntime session."""
        uri = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        opts = ort.SessionOptions()
        threads = int(os.environ.get("BENCH_ORT_THREADS", "1"))  # README "onnxruntime threads"
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(uri, opts, providers=["CPUExecutionProvider"])
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode every input by name, run the session, return the requested outputs."""
        feed = {
            inp.name: NumpyCodec.decode_input(inp).astype(np.float32, copy=False)
            for inp in payload.inputs
        }
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        results = self._session.run(wanted, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(wanted, results, strict=True)],
        )
