"""Pipelines as registry objects: created through /api/v1/pipelines by members, checked before
anything is stored, deployed like models and served on every protocol, private to their owner.

A real server with its own registry; the steps are iris classifiers (skops) uploaded through the
API and served by worker processes; tritonclient (gRPC) and plain HTTP as the clients."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import yaml
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from inferd.cli.main import cli
from inferd.client import Client
from tests.integration.platform import Platform, iris_skops

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]

VOTE: dict[str, Any] = {
    "format": 1,
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
    "root": "main",
    "nodes": {
        "main": {"kind": "sequence", "steps": [
            {"node": "vote"}, {"processor": "format", "config": {"select": ["predict"]}}]},
        "vote": {"kind": "ensemble", "aggregate": "majority_vote", "steps": [
            {"model": "iris_a"}, {"model": "iris_b"}, {"model": "iris_a", "name": "again"}]},
    },
    "layout": {"main": {"x": 0, "y": 0}, "vote": {"x": 200, "y": 0}},
}  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("pipelines") / "data").start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def alice(platform: Platform) -> dict[str, str]:
    headers = platform.user("alice")
    data, sample = iris_skops()
    for name in ("iris_a", "iris_b"):
        platform.public_model(headers, name, data, {"sample_input": sample}, filename="m.skops")
        platform.deploy(headers, {"model": name})  # a pipeline's steps are served models
    return headers


@pytest.fixture(scope="module")
def bob(platform: Platform) -> dict[str, str]:
    headers = platform.user("bob")
    data, sample = iris_skops()
    r = platform.http.post("/api/v1/models", headers=headers, json={"name": "bobs_private"})
    assert r.status_code == 201, r.text
    r = platform.upload(headers, "bobs_private", data, {"sample_input": sample}, "m.skops")
    assert r.status_code == 201, r.text
    return headers


def body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 4],
                        "data": [x for r in rows for x in r]}]}  # fmt: skip


def predict(platform: Platform, headers: dict[str, str], model: str) -> httpx.Response:
    return platform.http.post(f"/v2/models/{model}/infer", headers=headers, json=body(ROWS))


def test_a_member_creates_deploys_and_calls_a_pipeline(
    platform: Platform, alice: dict[str, str]
) -> None:
    doc = {"name": "vote", "document": VOTE, "visibility": "public"}
    r = platform.http.post("/api/v1/pipelines", headers=alice, json=doc)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["version"] == 1 and created["framework"] == "pipeline"
    assert created["document"]["layout"] == VOTE["layout"]  # the editor's positions come back
    listed = platform.http.get("/api/v1/pipelines", headers=alice).json()
    assert [p["name"] for p in listed] == ["vote"]
    got = platform.http.get("/api/v1/pipelines/vote", headers=alice).json()
    assert got["document"] == VOTE
    platform.deploy(alice, {"model": "vote"})
    direct = predict(platform, alice, "iris_a")
    assert direct.status_code == 200, direct.text
    expected = next(o["data"] for o in direct.json()["outputs"] if o["name"] == "predict")
    answer = predict(platform, alice, "vote")
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["predict"]
    assert answer.json()["outputs"][0]["data"] == expected
    assert len(set(expected)) > 1  # the rows are of different classes: the vote is per row
    v1 = platform.http.post("/v1/models/vote:predict", headers=alice, json={"instances": ROWS})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == expected
    assert platform.server is not None and platform.server.grpc_port
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{platform.server.grpc_port}")
    try:
        x = tgrpc.InferInput("input", [3, 4], "FP32")
        x.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
        out = client.infer("vote", [x], headers={"authorization": alice["Authorization"]})
        assert out.as_numpy("predict").tolist() == expected
    finally:
        client.close()
    meta = platform.http.get("/v2/models/vote", headers=alice).json()
    assert meta["platform"] == "pipeline"


def test_a_new_version_is_checked_and_numbered(platform: Platform, alice: dict[str, str]) -> None:
    platform.http.post("/api/v1/pipelines", headers=alice,
                       json={"name": "versions", "document": VOTE})  # fmt: skip
    doc = copy.deepcopy(VOTE)
    doc["nodes"]["vote"]["aggregate"] = "mean"
    r = platform.http.put("/api/v1/pipelines/versions", headers=alice, json={"document": doc})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    first = platform.http.get("/api/v1/pipelines/versions/versions/1", headers=alice).json()
    assert first["document"]["nodes"]["vote"]["aggregate"] == "majority_vote"
    r = platform.http.put("/api/v1/pipelines/iris_a", headers=alice, json={"document": doc})
    assert r.status_code == 409 and "a model, not a pipeline" in r.json()["error"]


def _broken(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VOTE)
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["nodes"]["vote"]["steps"].append({"node": "main"}),
            "the nodes form a cycle: main -> vote -> main",
        ),
        (
            lambda d: d["inputs"][0].update(datatype="INT64"),
            "nodes.vote.steps[0].inputs.input: model 'iris_a' takes FP32 of rank 2, and 'input' "
            "is INT64 of rank 2",
        ),
        (
            lambda d: d["inputs"][0].update(shape=[4]),
            "takes FP32 of rank 2, and 'input' is FP32 of rank 1",
        ),
        (
            lambda d: d["nodes"]["vote"]["steps"].append({"model": "nobody"}),
            "nodes.vote.steps[3].model: no model 'nobody' that you may use",
        ),
        (
            lambda d: d["nodes"]["vote"]["steps"].append({"model": "bobs_private"}),
            "nodes.vote.steps[3].model: no model 'bobs_private' that you may use",
        ),
        (
            lambda d: d["nodes"]["vote"]["steps"][0].update(inputs={"input": "nope"}),
            "nodes.vote.steps[0].inputs.input: no tensor 'nope' here",
        ),
        (
            lambda d: d["nodes"].update(spare={"kind": "sequence", "steps": [{"model": "iris_a"}]}),
            "nodes.spare: not reachable from the root 'main'",
        ),
        (
            lambda d: d["nodes"]["main"]["steps"][1].update(config={"select": 3}),
            "nodes.main.steps[1].config.select",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_field_and_nothing_is_stored(
    platform: Platform, alice: dict[str, str], bob: dict[str, str], change: Any, message: str
) -> None:
    doc = _broken(change)
    r = platform.http.post("/api/v1/pipelines", headers=alice,
                           json={"name": "badpipe", "document": doc})  # fmt: skip
    assert r.status_code == 422, r.text
    assert message in r.json()["error"], r.json()["error"]
    assert platform.http.get("/api/v1/pipelines/badpipe", headers=alice).status_code == 404
    assert platform.http.get("/api/v1/models/badpipe", headers=alice).status_code == 404
    check = platform.http.post("/api/v1/pipelines/validate", headers=alice,
                               json={"document": doc})  # fmt: skip
    assert check.status_code == 422 and message in check.json()["error"]


def test_the_validate_route_accepts_a_good_document(
    platform: Platform, alice: dict[str, str]
) -> None:
    r = platform.http.post("/api/v1/pipelines/validate", headers=alice, json={"document": VOTE})
    assert r.status_code == 200, r.text
    assert r.json() == {"valid": True, "nodes": ["main", "vote"], "models": ["iris_a", "iris_b"]}


def test_another_members_private_pipeline_is_404_on_every_protocol(
    platform: Platform, alice: dict[str, str], bob: dict[str, str]
) -> None:
    r = platform.http.post("/api/v1/pipelines", headers=alice,
                           json={"name": "secret", "document": VOTE})  # fmt: skip
    assert r.status_code == 201, r.text
    platform.deploy(alice, {"model": "secret"})
    assert predict(platform, alice, "secret").status_code == 200
    assert predict(platform, bob, "secret").status_code == 404
    v1 = platform.http.post("/v1/models/secret:predict", headers=bob, json={"instances": ROWS})
    assert v1.status_code == 404
    assert platform.http.get("/v2/models/secret", headers=bob).status_code == 404
    assert platform.http.get("/api/v1/pipelines/secret", headers=bob).status_code == 404
    assert "secret" not in [p["name"] for p in
                            platform.http.get("/api/v1/pipelines", headers=bob).json()]  # fmt: skip
    assert platform.server is not None
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{platform.server.grpc_port}")
    try:
        x = tgrpc.InferInput("input", [3, 4], "FP32")
        x.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("secret", [x], headers={"authorization": bob["Authorization"]})
        assert refused.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()
    r = platform.http.delete("/api/v1/pipelines/secret", headers=bob)
    assert r.status_code == 404


def test_the_cli_and_the_sdk(platform: Platform, alice: dict[str, str], tmp_path: Any) -> None:
    """`inferd pipelines create|validate|show|update|list|delete` from a YAML file, through the
    SDK, against the real server."""
    r = platform.http.post("/api/v1/keys", headers=alice,
                           json={"name": "cli", "scopes": ["infer", "manage"]})  # fmt: skip
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert platform.server is not None
    env = {"INFERD_URL": platform.server.url, "INFERD_API_KEY": key}
    path = tmp_path / "vote.yaml"
    path.write_text(yaml.safe_dump({"platform": "pipeline", "pipeline": VOTE}))
    runner = CliRunner()
    res = runner.invoke(cli, ["pipelines", "validate", str(path)], env=env)
    assert res.exit_code == 0 and "valid: nodes main, vote" in res.output, res.output
    res = runner.invoke(cli, ["pipelines", "create", "clivote", str(path)], env=env)
    assert res.exit_code == 0, res.output
    assert "created pipeline clivote version 1 (private)" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(yaml.safe_dump({**VOTE, "root": "nowhere"}))
    res = runner.invoke(cli, ["pipelines", "update", "clivote", str(bad)], env=env)
    assert res.exit_code == 1 and "root: no node named 'nowhere'" in res.output, res.output
    res = runner.invoke(cli, ["pipelines", "show", "clivote"], env=env)
    assert res.exit_code == 0 and "aggregate: majority_vote" in res.output, res.output
    with Client(platform.server.url, api_key=key) as sdk:
        assert "clivote" in [p["name"] for p in sdk.pipelines()]
        doc = sdk.pipeline("clivote")["document"]
        doc["nodes"]["vote"]["aggregate"] = "mean"
        assert sdk.update_pipeline("clivote", doc)["version"] == 2
        assert sdk.pipeline("clivote", 1)["document"]["nodes"]["vote"]["aggregate"] == (
            "majority_vote"
        )
    res = runner.invoke(cli, ["pipelines", "delete", "clivote"], env=env)
    assert res.exit_code == 0, res.output
    assert platform.http.get("/api/v1/pipelines/clivote", headers=alice).status_code == 404
