"""Drive a running inferd's gRPC port with the kserve SDK's InferenceGRPCClient (a separate
process: kserve's `inference.*` descriptors clash with tritonclient.grpc's)."""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(url: str) -> dict[str, object]:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    async with InferenceGRPCClient(url, timeout=30, retries=0) as client:
        out: dict[str, object] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("iris_sklearn"),
        }
        for key, typed in (("typed", True), ("raw", False)):
            inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
            if typed:  # a plain list travels in contents.fp32_contents
                inp.set_data_from_numpy(x, binary_data=False)
                inp._data = x.ravel().tolist()
            else:
                inp.set_data_from_numpy(x, binary_data=True)
            res = await client.infer(InferRequest(model_name="iris_sklearn", infer_inputs=[inp]))
            out[key] = {o.name: o.as_numpy().tolist() for o in res.outputs}["predict"]
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
