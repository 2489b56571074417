"""The response cache on a real server with real worker processes: identical requests run the
model once, other parameters or inputs run it again, models that did not opt in never are
cached, statistics and /metrics report the hits, and two servers share one Redis cache.

The model reports how many times its worker ran it (N) and the worker's process id (PID), so a
cached answer is told from a fresh one by the answer itself."""

from __future__ import annotations

import re
import struct
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import redis
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inferd import serve
from inferd.runner import RunningServer
from tests.conftest import ADMIN

COUNTER = textwrap.dedent(
    """
    import os
    import numpy as np

    class Model:
        calls = 0

        def infer(self, inputs, parameters):
            Model.calls += 1
            scale = float(parameters.get("scale", 2))
            return {"Y": inputs["X"] * scale, "N": np.array([Model.calls], np.int64),
                    "PID": np.array([os.getpid()], np.int64),
                    "S": np.array([b"calls=%d" % Model.calls], dtype=object)}
    """
)
IO = textwrap.dedent(
    """
    runtime: python
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs:
      - {name: Y, datatype: FP32, shape: [-1]}
      - {name: N, datatype: INT64, shape: [1]}
      - {name: PID, datatype: INT64, shape: [1]}
      - {name: S, datatype: BYTES, shape: [1]}
    """
)
CACHED_YAML = IO + "response_cache: {enable: true}\n"
BAD_YAML = IO + "required: false\nresponse_cache: {enable: 'yes'}\n"


def write_repo(root: Path) -> Path:
    for name, yaml in (("cached", CACHED_YAML), ("plain", IO), ("toggle", IO), ("bad", BAD_YAML)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(COUNTER)
        (root / name / "model.yaml").write_text(yaml)
    return root


def start(root: Path, data_dir: Path, **settings: Any) -> RunningServer:
    settings.setdefault("grpc", {"enabled": False})
    running = serve(model_repository=root, http_port=0, block=False, data_dir=data_dir,
                    log_level="warning", **settings)  # fmt: skip
    assert running is not None
    return running


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repo(tmp_path_factory.mktemp("cache-repo"))


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start(repo, tmp_path_factory.mktemp("cache-data"), grpc={"port": 0}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def body(*xs: float, **params: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [len(xs)],
                                       "data": list(xs)}]}  # fmt: skip
    if params:
        doc["parameters"] = params
    return doc


def infer(c: httpx.Client, model: str, doc: dict[str, Any]) -> dict[str, Any]:
    r = c.post(f"/v2/models/{model}/infer", json=doc)
    assert r.status_code == 200, r.text
    return {o["name"]: o["data"] for o in r.json()["outputs"]}


def stats(c: httpx.Client, model: str) -> dict[str, Any]:
    r = c.get(f"/v2/models/{model}/stats")
    assert r.status_code == 200, r.text
    entry: dict[str, Any] = r.json()["model_stats"][0]
    return entry


def metric(c: httpx.Client, name: str, model: str) -> float:
    text = c.get("/metrics").text
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
    assert m, f"{name} for {model} not in /metrics"
    return float(m.group(1))


def test_identical_requests_run_the_model_once(client: httpx.Client) -> None:
    first = infer(client, "cached", body(1, 2, 3))
    assert first["N"] == [1] and first["Y"] == [2, 4, 6] and first["S"] == ["calls=1"]
    # parameters that steer the server, not the model, do not change the answer
    again = infer(client, "cached", body(1, 2, 3, timeout=5_000_000, binary_data_output=False))
    assert again == first
    assert infer(client, "cached", body(1, 2, 3)) == first

    other_param = infer(client, "cached", body(1, 2, 3, scale=10))
    assert other_param["N"] == [2] and other_param["Y"] == [10, 20, 30]
    other_input = infer(client, "cached", body(1, 2, 4))
    assert other_input["N"] == [3]
    assert infer(client, "cached", body(1, 2, 3, scale=10)) == other_param  # cached too
    # asking for fewer outputs is another request (the model computes what it is asked)
    only_y = body(1, 2, 3) | {"outputs": [{"name": "Y"}]}
    assert infer(client, "cached", only_y) == {"Y": [2, 4, 6]}
    assert infer(client, "cached", body(1, 2, 3))["N"] == [1]

    s = stats(client, "cached")
    inf = s["inference_stats"]
    assert inf["cache_miss"]["count"] == 4 and inf["cache_miss"]["ns"] > 0
    assert inf["cache_hit"]["count"] == 4 and inf["cache_hit"]["ns"] > 0
    assert inf["success"]["count"] == 8
    assert s["execution_count"] == 4 and s["inference_count"] == 4
    assert metric(client, "inferd_response_cache_hits_total", "cached") == 4
    assert metric(client, "inferd_response_cache_misses_total", "cached") == 4
    assert metric(client, "inferd_inference_success_total", "cached") == 8
    assert metric(client, "inferd_inference_executions_total", "cached") == 4
    assert re.search(r"^inferd_response_cache_bytes [1-9]", client.get("/metrics").text, re.M)


def test_binary_requests_share_entries_with_json_ones(client: httpx.Client) -> None:
    json_answer = infer(client, "cached", body(7, 8))
    raw = struct.pack("<2f", 7, 8)
    header = (
        b'{"inputs":[{"name":"X","datatype":"FP32","shape":[2],'
        b'"parameters":{"binary_data_size":8}}]}'
    )
    r = client.post(
        "/v2/models/cached/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    assert {o["name"]: o["data"] for o in r.json()["outputs"]} == json_answer


def test_grpc_requests_share_entries_with_rest_ones(
    server: RunningServer, client: httpx.Client
) -> None:
    rest = infer(client, "cached", body(5, 6, 7))
    hits = stats(client, "cached")["inference_stats"]["cache_hit"]["count"]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="cached")
        t = req.inputs.add(name="X", datatype="FP32", shape=[3])
        t.contents.fp32_contents.extend([5, 6, 7])
        # priority steers the server only: still the same request
        req.parameters["priority"].int64_param = 1
        reply = stub.ModelInfer(req, timeout=30)
        raw = dict(zip([o.name for o in reply.outputs], reply.raw_output_contents, strict=True))
        assert np.frombuffer(raw["Y"], "<f4").tolist() == rest["Y"]
        assert np.frombuffer(raw["N"], "<i8").tolist() == rest["N"]
        assert np.frombuffer(raw["PID"], "<i8").tolist() == rest["PID"]
        config = stub.ModelConfig(pb.ModelConfigRequest(name="cached"), timeout=30).config
        assert config.response_cache.enable is True
        st = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cached"), timeout=30)
        assert st.model_stats[0].inference_stats.cache_hit.count == hits + 1


def test_a_model_without_the_field_is_never_cached(client: httpx.Client) -> None:
    counts = [infer(client, "plain", body(1, 2, 3))["N"][0] for _ in range(3)]
    assert counts == [1, 2, 3]
    inf = stats(client, "plain")["inference_stats"]
    assert inf["cache_hit"] == {"count": 0, "ns": 0} and inf["cache_miss"] == {"count": 0, "ns": 0}
    assert metric(client, "inferd_response_cache_hits_total", "plain") == 0
    r = client.get("/v2/models/plain/config")
    assert r.json()["response_cache"] == {"enable": False}
    assert client.get("/v2/models/cached/config").json()["response_cache"] == {"enable": True}


def test_bad_values_are_refused_naming_the_field(client: httpx.Client) -> None:
    index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
    assert index["bad"]["state"] == "UNAVAILABLE"
    assert "'response_cache.enable' must be true or false" in index["bad"]["reason"]
    r = client.post("/v2/repository/models/toggle/load", headers=ADMIN,
                    json={"parameters": {"config": {"response_cache": "on"}}})  # fmt: skip
    assert r.status_code == 400 and "'response_cache' must be a mapping" in r.json()["error"]


def test_a_load_time_config_turns_the_cache_on(client: httpx.Client) -> None:
    assert infer(client, "toggle", body(4))["N"] == [1]
    assert infer(client, "toggle", body(4))["N"] == [2]
    on = {"parameters": {"config": {"response_cache": {"enable": True}}}}
    r = client.post("/v2/repository/models/toggle/load", headers=ADMIN, json=on)
    assert r.status_code == 200, r.text
    first = infer(client, "toggle", body(4))  # a new worker: its count starts again
    assert infer(client, "toggle", body(4)) == first
    assert stats(client, "toggle")["inference_stats"]["cache_hit"]["count"] == 1


# ---- shared through Redis ------------------------------------------------------------------


def test_two_servers_share_one_redis_cache(
    repo: Path, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    cache = {"backend": "redis", "redis_url": redis_url, "ttl_s": 60}
    settings = {"redis_prefix": redis_prefix, "response_cache": cache}
    a = start(repo, tmp_path / "a", **settings)
    with a:
        b = start(repo, tmp_path / "b", **settings)
        with b, httpx.Client(base_url=a.url) as ca, httpx.Client(base_url=b.url) as cb:
            first = infer(ca, "cached", body(9, 9))
            assert first["N"] == [1]
            # b's own worker never ran: the answer (a's worker's process id) came from Redis
            assert infer(cb, "cached", body(9, 9)) == first
            sb = stats(cb, "cached")
            assert sb["execution_count"] == 0
            assert sb["inference_stats"]["cache_hit"]["count"] == 1
            fresh = infer(cb, "cached", body(9, 9, scale=3))
            assert fresh["PID"] != first["PID"] and fresh["N"] == [1]
            assert infer(ca, "cached", body(9, 9, scale=3)) == fresh
            # a model that did not opt in stays out of the shared cache too
            assert infer(ca, "plain", body(9))["N"] == [1]
            assert infer(cb, "plain", body(9))["N"] == [1]
            assert infer(cb, "plain", body(9))["N"] == [2]
    inspect = redis.Redis.from_url(redis_url)
    try:
        keys = list(inspect.scan_iter(match=f"{redis_prefix}:response:*"))
        assert len(keys) == 2
        assert all(0 < inspect.pttl(k) <= 60_000 for k in keys)
    finally:
        inspect.close()


def test_an_unreachable_redis_makes_misses_not_failures(repo: Path, tmp_path: Path) -> None:
    dead = {"response_cache": {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}}
    with start(repo, tmp_path, **dead) as running, httpx.Client(base_url=running.url) as c:
        assert infer(c, "cached", body(1))["N"] == [1]
        assert infer(c, "cached", body(1))["N"] == [2]
        inf = stats(c, "cached")["inference_stats"]
        assert inf["cache_miss"]["count"] == 2 and inf["cache_hit"]["count"] == 0
        assert inf["fail"]["count"] == 0
