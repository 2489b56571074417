"""Drive a running inferd with the kserve SDK's REST client (run as a separate process:
the kserve package registers gRPC `inference.*` protos that clash with tritonclient.grpc's)."""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str) -> dict[str, object]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    out: dict[str, object] = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, "iris_sklearn"),
        "missing_ready": await client.is_model_ready(url, "no_such_model"),
    }
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    res = await client.infer(url, InferRequest(model_name="iris_sklearn", infer_inputs=[inp]),
                             model_name="iris_sklearn")  # fmt: skip
    outputs = {o.name: o.as_numpy().tolist() for o in res.outputs}
    out["predict"] = outputs["predict"]
    out["proba_rows"] = len(outputs["predict_proba"])
    inp.set_data_from_numpy(x, binary_data=True)
    res = await client.infer(url, InferRequest(model_name="iris_sklearn", infer_inputs=[inp]),
                             model_name="iris_sklearn")  # fmt: skip
    out["predict_binary_in"] = {o.name: o.as_numpy().tolist() for o in res.outputs}["predict"]
    await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
