"""Traffic splits across a deployment's revisions: a real server, real worker processes, real
clients (httpx for V2 and V1, tritonclient over gRPC). The routing step is the data plane's, so
every protocol is split alike, and every answer says which revision served it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.platform import Platform, iris_skops

HEADER = "x-inferd-model-version"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Alice's public model `split` with three ready versions (the same classifier)."""
    p = Platform(tmp_path_factory.mktemp("traffic") / "data").start()
    alice = p.user("alice")
    artifact, sample = iris_skops()
    p.public_model(alice, "split", artifact, {"sample_input": sample}, versions=3)
    try:
        yield {"p": p, "alice": alice, "sample": sample}
    finally:
        p.stop()


def _deploy(world: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    p, alice = world["p"], world["alice"]
    r = p.http.post("/api/v1/deployments", headers=alice, json={"model": "split", **body})
    assert r.status_code == 201, r.text
    d = p.wait_deployment(alice, r.json()["id"])
    assert d["status"] == "ready", d
    return d


def _patch(world: dict[str, Any], dep_id: str, body: dict[str, Any]) -> httpx.Response:
    p, alice = world["p"], world["alice"]
    return p.http.patch(f"/api/v1/deployments/{dep_id}", headers=alice, json=body)


def _v2(http: httpx.Client, sample: dict[str, Any], n: int, path: str = "") -> Counter[str]:
    """`n` V2 REST calls; the revisions that answered (body and header agree)."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = http.post(f"/v2/models/split{path}/infer", json=sample)
        assert r.status_code == 200, r.text
        assert r.headers[HEADER] == r.json()["model_version"]
        seen[r.json()["model_version"]] += 1
    return seen


@pytest.fixture(scope="module")
def deployment(world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    d = _deploy(world, {"traffic": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]})
    assert d["version"] == 1 and d["traffic"] == [{"version": 1, "weight": 90},
                                                  {"version": 2, "weight": 10}]  # fmt: skip
    yield d
    r = world["p"].http.delete(f"/api/v1/deployments/{d['id']}", headers=world["alice"])
    assert r.status_code == 204, r.text


def test_a_90_10_split_holds_on_every_protocol_and_each_answer_names_its_revision(
    world: dict[str, Any], deployment: dict[str, Any]
) -> None:
    p, sample = world["p"], world["sample"]
    seen = _v2(p.http, sample, 2000)
    assert set(seen) == {"1", "2"}
    assert abs(seen["2"] / 2000 - 0.10) <= 0.03, seen
    # KServe V1 and gRPC go through the same routing step
    v1: Counter[str] = Counter()
    instances = np.asarray(sample["inputs"][0]["data"], dtype=float).reshape(2, 4).tolist()
    for _ in range(300):
        r = p.http.post("/v1/models/split:predict", json={"instances": instances})
        assert r.status_code == 200, r.text
        v1[r.headers[HEADER]] += 1
    assert set(v1) == {"1", "2"} and v1["1"] > v1["2"], v1
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{p.server.grpc_port}")
    x = grpcclient.InferInput("input", [2, 4], "FP32")
    x.set_data_from_numpy(np.asarray(instances, dtype=np.float32))
    grpc_seen = Counter(client.infer("split", [x]).get_response().model_version
                        for _ in range(300))  # fmt: skip
    client.close()
    assert set(grpc_seen) == {"1", "2"} and grpc_seen["1"] > grpc_seen["2"], grpc_seen
    # a request that names a revision reaches it; a version that is not deployed does not
    assert _v2(p.http, sample, 20, "/versions/2") == Counter({"2": 20})
    r = p.http.post("/v2/models/split/versions/3/infer", json=sample)
    assert r.status_code == 404, r.text
    # a version in the split cannot be deleted under it
    r = p.http.delete("/api/v1/models/split/versions/2", headers=world["alice"])
    assert r.status_code == 409, r.text


def test_a_weight_change_reloads_nothing_and_drops_no_request(
    world: dict[str, Any], deployment: dict[str, Any]
) -> None:
    p, sample = world["p"], world["sample"]
    engine = p.server.engine
    pids = {v: engine.version("split", v).scheduler.live()[0].replica.pid for v in ("1", "2")}
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # requests keep coming while the split changes
        with httpx.Client(base_url=p.server.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/v2/models/split/infer", json=sample)
                if r.status_code != 200:
                    failures.append(r.text)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        r = _patch(world, deployment["id"], {"traffic": {"1": 0, "2": 100}})
        assert r.status_code == 200, r.text
        d = p.wait_deployment(world["alice"], deployment["id"])
        assert d["status"] == "ready" and d["version"] == 2, d
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    # the same worker processes serve both revisions: nothing was reloaded
    assert {v: engine.version("split", v).scheduler.live()[0].replica.pid
            for v in ("1", "2")} == pids  # fmt: skip
    assert _v2(p.http, sample, 50) == Counter({"2": 50})
    assert _v2(p.http, sample, 5, "/versions/1") == Counter({"1": 5})  # weight 0: still served
    # back to one version: the others are unloaded
    r = _patch(world, deployment["id"], {"version": 1})
    assert r.status_code == 200, r.text
    d = p.wait_deployment(world["alice"], deployment["id"])
    assert d["traffic"] == [{"version": 1, "weight": 100}], d
    assert _v2(p.http, sample, 20) == Counter({"1": 20})
    assert p.http.post("/v2/models/split/versions/2/infer", json=sample).status_code == 404


@pytest.mark.parametrize(
    ("traffic", "field"),
    [
        ({"1": 60, "2": 30}, "traffic: weights must sum to 100"),
        ([{"version": 1, "weight": 50}, {"version": 9, "weight": 50}], "traffic[1].version"),
        ([{"version": 1, "weight": 50}, {"version": 1, "weight": 50}], "traffic[1].version"),
        ([{"version": 1, "weight": 150}], "traffic[0].weight"),
        ([{"version": 1, "weight": 100, "shadow": True}], "traffic[0].shadow"),
        ([], "traffic"),
        ("1=100", "traffic"),
    ],
)
def test_bad_traffic_is_refused_naming_the_field_and_changes_nothing(
    world: dict[str, Any], deployment: dict[str, Any], traffic: Any, field: str
) -> None:
    p, alice = world["p"], world["alice"]
    before = p.http.get(f"/api/v1/deployments/{deployment['id']}", headers=alice).json()
    r = _patch(world, deployment["id"], {"traffic": traffic})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(field), r.text
    after = p.http.get(f"/api/v1/deployments/{deployment['id']}", headers=alice).json()
    assert after["traffic"] == before["traffic"] and after["generation"] == before["generation"]


def test_version_and_traffic_together_are_refused(
    world: dict[str, Any], deployment: dict[str, Any]
) -> None:
    r = _patch(world, deployment["id"], {"version": 1, "traffic": {"1": 100}})
    assert r.status_code == 400 and r.json()["error"].startswith("traffic:"), r.text
