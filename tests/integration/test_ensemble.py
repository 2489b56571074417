"""Triton ensembles on a real server with real worker processes, driven by tritonclient (HTTP and
gRPC) the way Triton's `image_client` / `ensemble_image_client` examples drive Triton.

The repository is Triton's image-classification ensemble in small: `preprocess`, a `python` model
that decodes a PNG with Pillow and scales it to a 3x8x8 float tensor, feeds `classifier`, an ONNX
model (flatten, dense layer, softmax over 10 classes); `ensemble_image` wires them
(`IMAGE` -> preprocess -> classifier -> `CLASSIFICATION`). `fanout` runs two classifiers on the
same preprocessed image in one wave; `broken` has a step that fails on purpose."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.utils import InferenceServerException

from inferd import serve
from inferd.runner import RunningServer
from tests.conftest import ADMIN, ADMIN_GRPC

PREPROCESS = textwrap.dedent(
    """
    import io

    import numpy as np
    from PIL import Image

    class Model:
        def infer(self, inputs, parameters):
            image = Image.open(io.BytesIO(inputs["INPUT_0"][0])).convert("RGB").resize((8, 8))
            chw = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
            return {"OUTPUT_0": chw}
    """
)
FAILS = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            raise RuntimeError("this step fails on purpose")
    """
)
LABELS = [f"class{i}" for i in range(10)]
# tritonclient's HTTP client adds its own entries to the headers dict it is given: each call
# gets a copy of ADMIN.


def classifier(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(192, 10)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(10,)).astype(np.float32), "B")
    shape = numpy_helper.from_array(np.array([10], dtype=np.int64), "S")
    nodes = [
        helper.make_node("Flatten", ["data"], ["flat"], axis=0),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["soft"], axis=1),
        helper.make_node("Reshape", ["soft", "S"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [10])],
        [w, b, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True)
    onnx.save(model, str(path / "model.onnx"))


def write(root: Path, name: str, yaml: str, code: str | None = None) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "model.yaml").write_text(textwrap.dedent(yaml))
    if code is not None:
        (root / name / "1" / "model.py").write_text(code)


ENSEMBLE = """
    platform: ensemble
    labels: [{labels}]
    inputs: [{{name: IMAGE, datatype: BYTES, shape: [1]}}]
    outputs: [{{name: CLASSIFICATION, datatype: FP32, shape: [10]}}]
    ensemble_scheduling:
      step:
        - model_name: preprocess
          model_version: -1
          input_map: {{INPUT_0: IMAGE}}
          output_map: {{OUTPUT_0: preprocessed_image}}
        - model_name: classifier
          model_version: 1
          input_map: {{data: preprocessed_image}}
          output_map: {{prob: CLASSIFICATION}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("ensemble-repo")
    write(root, "preprocess", """
        runtime: python
        trusted: true
        inputs: [{name: INPUT_0, datatype: BYTES, shape: [1]}]
        outputs: [{name: OUTPUT_0, datatype: FP32, shape: [3, 8, 8]}]
    """, PREPROCESS)  # fmt: skip
    classifier(root / "classifier" / "1", seed=1)
    classifier(root / "classifier_b" / "1", seed=2)
    write(root, "fails", """
        runtime: python
        trusted: true
        inputs: [{name: X, datatype: FP32, shape: [3, 8, 8]}]
        outputs: [{name: Y, datatype: FP32, shape: [10]}]
    """, FAILS)  # fmt: skip
    write(root, "ensemble_image", ENSEMBLE.format(labels=", ".join(LABELS)))
    write(root, "fanout", """
        platform: ensemble
        inputs: [{name: IMAGE, datatype: BYTES, shape: [1]}]
        outputs: [{name: A, datatype: FP32, shape: [10]}, {name: B, datatype: FP32, shape: [10]}]
        ensemble_scheduling:
          step:
            - {model_name: classifier, input_map: {data: img}, output_map: {prob: A}}
            - {model_name: classifier_b, input_map: {data: img}, output_map: {prob: B}}
            - {model_name: preprocess, input_map: {INPUT_0: IMAGE}, output_map: {OUTPUT_0: img}}
    """)  # fmt: skip
    write(root, "scores", """
        platform: ensemble
        inputs: [{name: pixels, datatype: FP32, shape: [3, 8, 8]}]
        outputs: [{name: scores, datatype: FP32, shape: [10]}]
        ensemble_scheduling:
          step:
            - {model_name: classifier, input_map: {data: pixels}, output_map: {prob: scores}}
    """)  # fmt: skip
    write(root, "broken", """
        platform: ensemble
        inputs: [{name: IMAGE, datatype: BYTES, shape: [1]}]
        outputs: [{name: OUT, datatype: FP32, shape: [10]}]
        ensemble_scheduling:
          step:
            - {model_name: preprocess, input_map: {INPUT_0: IMAGE}, output_map: {OUTPUT_0: img}}
            - {model_name: fails, input_map: {X: img}, output_map: {Y: OUT}}
    """)  # fmt: skip
    write(root, "cyclic", """
        platform: ensemble
        required: false
        inputs: [{name: IN, datatype: FP32, shape: [1]}]
        outputs: [{name: OUT, datatype: FP32, shape: [1]}]
        ensemble_scheduling:
          step:
            - {model_name: m, input_map: {x: IN, y: b}, output_map: {z: a}}
            - {model_name: n, input_map: {x: a}, output_map: {z: b}}
            - {model_name: o, input_map: {x: a}, output_map: {z: OUT}}
    """)  # fmt: skip
    running = serve(model_repository=root, http_port=0, block=False, grpc={"port": 0},
                    log_level="warning")  # fmt: skip
    assert running is not None
    with running:
        yield running


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_input(module: type, data: bytes) -> object:
    inp = module.InferInput("IMAGE", [1], "BYTES")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(np.array([data], dtype=object))
    return inp


def by_hand(client: thttp.InferenceServerClient, data: bytes, model: str = "classifier"
            ) -> np.ndarray:  # fmt: skip
    pre = thttp.InferInput("INPUT_0", [1], "BYTES")
    pre.set_data_from_numpy(np.array([data], dtype=object))
    chw = client.infer("preprocess", [pre], headers=dict(ADMIN)).as_numpy("OUTPUT_0")
    assert chw.shape == (3, 8, 8)
    x = thttp.InferInput("data", [3, 8, 8], "FP32")
    x.set_data_from_numpy(chw)
    return client.infer(model, [x], headers=dict(ADMIN)).as_numpy("prob")


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def test_the_ensemble_answers_as_its_steps_called_by_hand_over_http_and_grpc(
    http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    for seed in range(3):
        data = png(seed)
        expected = by_hand(http, data)
        assert expected.shape == (10,) and abs(float(expected.sum()) - 1.0) < 1e-5
        via_http = http.infer("ensemble_image", [image_input(thttp, data)], headers=dict(ADMIN))
        via_grpc = grpc_client.infer("ensemble_image", [image_input(tgrpc, data)],
                                     headers=dict(ADMIN_GRPC))  # fmt: skip
        assert via_http.get_response()["model_name"] == "ensemble_image"
        np.testing.assert_allclose(via_http.as_numpy("CLASSIFICATION"), expected, rtol=1e-6)
        np.testing.assert_allclose(via_grpc.as_numpy("CLASSIFICATION"), expected, rtol=1e-6)


def test_classification_extension_on_the_ensemble_output(
    http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    # as Triton's image_client asks: the top classes as "score:index:label"
    data = png(7)
    expected = by_hand(http, data)
    top = np.argsort(-expected)[:3]
    for module, client, headers in ((thttp, http, ADMIN), (tgrpc, grpc_client, ADMIN_GRPC)):
        out = module.InferRequestedOutput("CLASSIFICATION", class_count=3)
        answer = client.infer("ensemble_image", [image_input(module, data)], outputs=[out],
                              headers=dict(headers))  # fmt: skip
        rows = [x.decode() for x in answer.as_numpy("CLASSIFICATION").ravel()]
        assert [int(r.split(":")[1]) for r in rows] == [int(i) for i in top]
        assert rows[0].endswith(f":{LABELS[top[0]]}")


def test_metadata_and_config_describe_the_ensemble(
    http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    meta = http.get_model_metadata("ensemble_image", headers=dict(ADMIN))
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [1]}]
    assert meta["outputs"] == [{"name": "CLASSIFICATION", "datatype": "FP32", "shape": [10]}]
    assert grpc_client.get_model_metadata("ensemble_image", headers=dict(ADMIN_GRPC)).platform == (
        "ensemble"
    )
    config = http.get_model_config("ensemble_image", headers=dict(ADMIN))
    assert config["platform"] == "ensemble"
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["preprocess", "classifier"]
    assert steps[0]["input_map"] == {"INPUT_0": "IMAGE"}
    assert http.is_model_ready("ensemble_image", headers=dict(ADMIN))


def test_independent_steps_run_in_one_wave(http: thttp.InferenceServerClient) -> None:
    data = png(3)
    answer = http.infer("fanout", [image_input(thttp, data)], headers=dict(ADMIN))
    np.testing.assert_allclose(answer.as_numpy("A"), by_hand(http, data), rtol=1e-6)
    np.testing.assert_allclose(answer.as_numpy("B"), by_hand(http, data, "classifier_b"),
                               rtol=1e-6)  # fmt: skip


def test_kserve_v1_predict_on_an_ensemble(server: RunningServer) -> None:
    pixels = np.random.default_rng(5).random((3, 8, 8), dtype=np.float32)
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
        answer = c.post("/v1/models/scores:predict", json={"instances": pixels.tolist()})
        assert answer.status_code == 200, answer.text
        direct = c.post("/v1/models/classifier:predict", json={"instances": pixels.tolist()})
    np.testing.assert_allclose(answer.json()["predictions"], direct.json()["predictions"],
                               rtol=1e-6)  # fmt: skip


def test_a_failing_step_is_named_in_the_error(
    server: RunningServer, http: thttp.InferenceServerClient
) -> None:
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
        answer = c.post("/v2/models/broken/infer", json=body)
        # the first step cannot decode "x" as an image: that step's error, named
        assert answer.status_code == 500
        assert answer.json()["error"].startswith("ensemble 'broken' step 0 (model 'preprocess')")
        with pytest.raises(InferenceServerException) as failed:
            http.infer("broken", [image_input(thttp, png(1))], headers=dict(ADMIN))
        error = failed.value.message()
        assert error.startswith("ensemble 'broken' step 1 (model 'fails')"), error
        assert "this step fails on purpose" in error
        stats = c.get("/v2/models/broken/stats").json()["model_stats"][0]
        assert stats["inference_stats"]["fail"]["count"] == 2


def test_an_invalid_ensemble_is_unavailable_with_the_reason(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
        index = {m["name"]: m for m in c.post("/v2/repository/index", json={}).json()}
        assert index["cyclic"]["state"] == "UNAVAILABLE"
        assert "has a cycle: step 0 (m), step 1 (n)" in index["cyclic"]["reason"]
        assert index["ensemble_image"]["state"] == "READY"
