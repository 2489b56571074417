"""The gRPC adapter on a real in-process server: typed and raw contents for every datatype,
status codes, streams, shared stats/metrics with REST, access log, health, and draining."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inferd import serve
from inferd.api.grpc.codec import CONTENTS_FIELD
from inferd.core.datatypes import NUMPY_DTYPES
from inferd.runner import RunningServer
from tests.conftest import ADMIN_GRPC
from tests.integration.conftest import Identity

Code = grpc.StatusCode
SIMPLE_A = np.arange(16, dtype=np.int32).reshape(1, 16)
SIMPLE_B = np.full((1, 16), 3, dtype=np.int32)


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    assert server.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_input(req: Any, name: str, arr: np.ndarray, datatype: str) -> None:
    inp = tc.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    req.inputs.extend([inp._get_tensor()])
    req.raw_input_contents.append(inp._get_content())


def simple_request(rid: str = "", model: str = "simple") -> Any:
    req = pb.ModelInferRequest(model_name=model, id=rid)
    raw_input(req, "INPUT0", SIMPLE_A, "INT32")
    raw_input(req, "INPUT1", SIMPLE_B, "INT32")
    return req


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b""], [b"xyz", b"\x00\xff"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    return np.array([[1, 2], [3, 100]], dtype=NUMPY_DTYPES[datatype])


ADMIN_MD = tuple(ADMIN_GRPC.items())


def expect(code: Code, call: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kw)
    assert err.value.code() == code, err.value.details()
    return str(err.value.details())


def test_typed_contents_every_datatype(stub: Any) -> None:
    for datatype in sorted(CONTENTS_FIELD):
        arr = sample(datatype)
        req = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}", id=datatype)
        t = req.inputs.add(name="IN", datatype=datatype, shape=arr.shape)
        getattr(t.contents, CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
        resp = stub.ModelInfer(req, timeout=30)
        assert resp.id == datatype and resp.outputs[0].datatype == datatype
        got = tc.InferResult(resp).as_numpy("OUT")
        assert got.shape == (2, 2) and got.tolist() == arr.tolist(), datatype


def test_raw_contents_every_datatype(stub: Any) -> None:
    for datatype in sorted(NUMPY_DTYPES):
        arr = sample(datatype)
        req = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
        raw_input(req, "IN", arr, datatype)
        got = tc.InferResult(stub.ModelInfer(req)).as_numpy("OUT")
        assert got.tolist() == arr.tolist(), datatype


def test_simple_and_requested_outputs(stub: Any) -> None:
    req = simple_request("r1")
    resp = stub.ModelInfer(req)
    result = tc.InferResult(resp)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), SIMPLE_A + SIMPLE_B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), SIMPLE_A - SIMPLE_B)
    assert (resp.model_name, resp.model_version, resp.id) == ("simple", "1", "r1")
    req.outputs.add(name="OUTPUT1")
    resp = stub.ModelInfer(req)
    assert [o.name for o in resp.outputs] == ["OUTPUT1"] and len(resp.raw_output_contents) == 1


def test_classification_parameter(stub: Any) -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    req = pb.ModelInferRequest(model_name="iris_sklearn")
    raw_input(req, "input", x, "FP32")
    out = req.outputs.add(name="predict_proba")
    out.parameters["classification"].int64_param = 2
    got = tc.InferResult(stub.ModelInfer(req)).as_numpy("predict_proba")
    assert got.shape == (1, 2) and got[0, 0].decode().endswith(":0:setosa")


def test_status_codes(stub: Any) -> None:
    msg = expect(Code.NOT_FOUND, stub.ModelInfer, simple_request(model="no_such_model"))
    assert msg.startswith("Request for unknown model")
    expect(Code.NOT_FOUND, stub.ModelMetadata, pb.ModelMetadataRequest(name="no_such_model"))
    expect(Code.NOT_FOUND, stub.ModelInfer, pb.ModelInferRequest(model_name="simple",
                                                                  model_version="7"))  # fmt: skip
    req = simple_request()
    req.inputs[0].contents.int_contents.extend([0] * 16)
    assert "INPUT0" in expect(Code.INVALID_ARGUMENT, stub.ModelInfer, req)
    req = simple_request()
    req.inputs[1].shape[0] = -1
    assert "negative" in expect(Code.INVALID_ARGUMENT, stub.ModelInfer, req)
    req = simple_request()
    del req.inputs[1:]
    del req.raw_input_contents[1:]
    assert "INPUT1" in expect(Code.INVALID_ARGUMENT, stub.ModelInfer, req)
    req = pb.ModelInferRequest(model_name="raiser")
    raw_input(req, "X", np.array([-1.0], np.float32), "FP32")
    assert "boom" in expect(Code.INTERNAL, stub.ModelInfer, req)
    req.model_name = "broken"
    expect(Code.UNAVAILABLE, stub.ModelInfer, req)
    msg = expect(Code.UNIMPLEMENTED, stub.SystemSharedMemoryStatus,
                 pb.SystemSharedMemoryStatusRequest())  # fmt: skip
    assert "SystemSharedMemoryStatus" in msg
    expect(Code.UNIMPLEMENTED, stub.TraceSetting, pb.TraceSettingRequest())


def test_readiness_rpcs(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="no_such_model")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "inferd" and "model_repository" in meta.extensions
    md = stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"))
    first = md.inputs[0]
    assert (first.name, first.datatype, list(first.shape)) == ("INPUT0", "INT32", [-1, 16])
    config = stub.ModelConfig(pb.ModelConfigRequest(name="simple")).config
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [16]
    assert config.input[0].data_type == 8  # TYPE_INT32


def test_stream_answers_in_band_and_stays_open(stub: Any) -> None:
    bad = simple_request("bad")
    bad.inputs[0].shape[1] = 15
    requests = [simple_request("a"), bad, simple_request("b", model="nope"),
                *(simple_request(f"n{i}") for i in range(20))]  # fmt: skip
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert len(responses) == len(requests)
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {r.id for r in requests}
    assert "byte size mismatch" in by_id["bad"].error_message
    assert by_id["b"].error_message.startswith("Request for unknown model")
    for rid in ["a", *(f"n{i}" for i in range(20))]:
        r = by_id[rid]
        assert r.error_message == ""
        out = tc.InferResult(r.infer_response).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, SIMPLE_A + SIMPLE_B)


def test_same_stats_and_metrics_as_rest(stub: Any, client: httpx.Client) -> None:
    def stats() -> dict[str, Any]:
        return client.get("/v2/models/simple/stats").json()["model_stats"][0]

    before = stats()
    stub.ModelInfer(simple_request())
    bad = simple_request()
    bad.inputs[0].datatype = "FP32"
    expect(Code.INVALID_ARGUMENT, stub.ModelInfer, bad)
    after = stats()
    assert after["inference_count"] == before["inference_count"] + 1
    assert (
        after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    )
    grpc_stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="simple")).model_stats
    assert len(grpc_stats) == 1 and grpc_stats[0].inference_count == after["inference_count"]
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert {"simple", "identity_fp16"} <= {s.name for s in everything}
    text = client.get("/metrics").text
    assert 'inferd_inference_requests_total{model="simple",version="1"}' in text


def test_access_log(stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inferd.access"):
        stub.ModelInfer(simple_request("log-grpc"))
        expect(Code.NOT_FOUND, stub.ModelInfer, simple_request("log-missing", model="nope"))
    lines = [r.__dict__["fields"] for r in caplog.records if r.name == "inferd.access"]
    ok = next(f for f in lines if f["request_id"] == "log-grpc")
    assert ok["method"] == "ModelInfer" and ok["status"] == "OK" and ok["model"] == "simple"
    assert ok["latency_ms"] > 0
    missing = next(f for f in lines if f["request_id"] == "log-missing")
    assert missing["status"] == "NOT_FOUND" and missing["model"] == "nope"


def test_repository_rpcs_refuse_bad_loads(stub: Any) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert {"simple", "broken"} <= {m.name for m in index}
    assert "broken" not in {m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(
        ready=True)).models}  # fmt: skip
    req = pb.RepositoryModelLoadRequest(model_name="simple")
    req.parameters["file:1/model.onnx"].bytes_param = b"x"
    assert "file" in expect(Code.INVALID_ARGUMENT, stub.RepositoryModelLoad, req, metadata=ADMIN_MD)
    req = pb.RepositoryModelLoadRequest(model_name="simple")
    req.parameters["config"].string_param = "{not json"
    assert "failed to load" in expect(
        Code.INVALID_ARGUMENT, stub.RepositoryModelLoad, req, metadata=ADMIN_MD
    )
    req.parameters["config"].int64_param = 3
    assert "string_param" in expect(
        Code.INVALID_ARGUMENT, stub.RepositoryModelLoad, req, metadata=ADMIN_MD
    )
    missing = pb.RepositoryModelLoadRequest(model_name="no_such_model")
    msg = expect(Code.NOT_FOUND, stub.RepositoryModelLoad, missing, metadata=ADMIN_MD)
    assert msg.startswith("failed to load 'no_such_model'")
    gone = pb.RepositoryModelUnloadRequest(model_name="no_such_model")
    expect(Code.NOT_FOUND, stub.RepositoryModelUnload, gone, metadata=ADMIN_MD)
    # repository control is for admins: anonymous callers are refused before anything happens
    expect(Code.UNAUTHENTICATED, stub.RepositoryModelUnload,
           pb.RepositoryModelUnloadRequest(model_name="simple"))  # fmt: skip
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready


def health_check(channel: grpc.Channel, service: bytes = b"") -> bytes:
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    body = b"\x0a" + bytes([len(service)]) + service if service else b""
    return bytes(check(body, timeout=10))


def test_health_service(channel: grpc.Channel) -> None:
    assert health_check(channel) == b"\x08\x01"  # SERVING
    assert health_check(channel, b"inference.GRPCInferenceService") == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as err:
        health_check(channel, b"nope")
    assert err.value.code() == Code.NOT_FOUND
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    stream = watch(b"", timeout=10)
    assert bytes(next(stream)) == b"\x08\x01"
    stream.cancel()


def test_shutdown_ends_open_streams_without_waiting_the_grace() -> None:
    running = serve(
        models={"echo": {"model": Identity(), "inputs": [{"name": "IN", "datatype": "FP32",
                "shape": [-1]}], "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [-1]}]}},
        http_port=0, block=False, grpc={"port": 0}, shutdown_grace_s=20, log_level="warning",
    )  # fmt: skip
    assert running is not None and running.grpc_port
    gate = threading.Event()

    def requests() -> Iterator[Any]:
        req = pb.ModelInferRequest(model_name="echo", id="1")
        raw_input(req, "IN", np.ones(3, np.float32), "FP32")
        yield req
        gate.wait(30)  # keep the stream open (the client has more to say) until shutdown

    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        responses = stub.ModelStreamInfer(requests(), timeout=30)
        assert next(responses).infer_response.id == "1"
        t0 = time.monotonic()
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        assert list(responses) == []  # the server ended the stream cleanly (status OK)
        assert time.monotonic() - t0 < 5  # not the 20 s grace
        gate.set()
        stopper.join(30)


def _sleeper_request(sleep: float) -> Any:
    req = pb.ModelInferRequest(model_name="sleeper")
    raw_input(req, "X", np.ones(1, np.float32), "FP32")
    req.parameters["sleep"].double_param = sleep
    return req


def test_cancelled_call_drops_its_queued_request(stub: Any, client: httpx.Client) -> None:
    def count() -> int:
        stats = client.get("/v2/models/sleeper/stats").json()["model_stats"][0]
        return int(stats["inference_count"])

    before = count()
    slow = stub.ModelInfer.future(_sleeper_request(0.8))
    time.sleep(0.2)
    queued = stub.ModelInfer.future(_sleeper_request(0))
    time.sleep(0.2)
    assert queued.cancel()  # the client gives up while its request waits behind the slow one
    assert slow.result(timeout=10).model_name == "sleeper"
    time.sleep(0.3)
    assert count() == before + 1  # the cancelled request never ran
    metrics = client.get("/metrics").text
    assert 'model="sleeper",reason="cancelled"' in metrics


def test_grpc_deadline_is_the_request_timeout(stub: Any) -> None:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_sleeper_request(1.0), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 0.9
    time.sleep(1.0)  # let the started execution finish before other tests use the model
