"""Inference graphs from a model repository on a real server with real worker processes:
sequence, switch, ensemble and splitter nodes with known answers, built-in processors, errors
and fallbacks, per-step metrics.

The step models are small `python` models whose answers are known in advance: `plus<k>` returns
`Y = X + k` and the class `k` as `LABEL`; `scale10` returns `Y = 10 X`; `logits` returns fixed
scores; `fails` always raises."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from inferd import serve
from inferd.runner import RunningServer
from tests.conftest import ADMIN
from tests.integration.test_memory_budget_server import metrics, value

PLUS = textwrap.dedent(
    """
    import numpy as np

    class Model:
        def infer(self, inputs, parameters):
            x = inputs["X"]
            return {"Y": x + %d, "LABEL": np.full(x.shape[:1], %d, dtype=np.int64)}
    """
)
PLUS_YAML = """
runtime: python
trusted: true
inputs: [{name: X, datatype: FP32, shape: [-1, 2]}]
outputs: [{name: Y, datatype: FP32, shape: [-1, 2]}, {name: LABEL, datatype: INT64, shape: [-1]}]
"""
SCALE = """
class Model:
    def infer(self, inputs, parameters):
        return {"Y": inputs["X"] * 10}
"""
LOGITS = """
import numpy as np

class Model:
    def infer(self, inputs, parameters):
        n = inputs["X"].shape[0]
        return {"SCORES": np.tile(np.array([[1.0, 3.0, 2.0]], dtype=np.float32), (n, 1))}
"""
FAILS = """
class Model:
    def infer(self, inputs, parameters):
        raise RuntimeError("this step fails on purpose")
"""

IO = {
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 2]}],
}

PIPELINES: dict[str, dict[str, Any]] = {
    # each step reads the previous one's outputs: ((x + 1) * 10) + 2
    "chain": {"root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
        {"model": "plus1"}, {"model": "scale10", "inputs": {"X": "Y"}},
        {"model": "plus2", "inputs": {"X": "Y"}, "name": "last"}]}}},
    # a tier parameter, then a value of the input, chooses the model
    "route": {"root": "main", "nodes": {"main": {"kind": "switch", "steps": [
        {"when": {"select": "$.parameters.tier", "eq": "gold"}, "model": "scale10"},
        {"when": {"select": "$.inputs.X[0][0]", "gt": 100}, "model": "plus2"},
        {"model": "plus1"}]}}},
    "vote": {**IO, "outputs": [{"name": "LABEL", "datatype": "INT64", "shape": [-1]}],
             "root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
                 {"node": "models"}, {"processor": "format", "config": {"select": ["LABEL"]}}]},
                 "models": {"kind": "ensemble", "aggregate": "majority_vote", "steps": [
                     {"model": "plus1", "name": "a"}, {"model": "plus2", "name": "b"},
                     {"model": "plus1", "name": "c"}, {"model": "plus3", "name": "d"}]}}},
    "wmean": {"root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
        {"node": "models"}, {"processor": "format", "config": {"select": ["Y"]}}]},
        "models": {"kind": "ensemble", "aggregate": "weighted_mean", "weights": [3, 1],
                   "steps": [{"model": "plus1"}, {"model": "plus3"}]}}},
    "ab": {**IO, "outputs": [{"name": "LABEL", "datatype": "INT64", "shape": [-1]}],
           "root": "main", "nodes": {"main": {"kind": "splitter", "steps": [
               {"model": "plus1", "weight": 70}, {"model": "plus2", "weight": 30}]}}},
    "post": {**IO, "outputs": [
        {"name": "SCORES_labels", "datatype": "BYTES", "shape": [-1, 2]},
        {"name": "SCORES_confidence", "datatype": "FP32", "shape": [-1]}],
        "root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
            {"processor": "validate", "config": {"rules": {"X": {"min": 0, "max": 1}}}},
            {"model": "logits"},
            {"processor": "softmax"},
            {"processor": "confidence", "config": {"tensors": ["SCORES"]}},
            {"processor": "top_k", "config": {"k": 2, "labels": ["cat", "dog", "fox"],
                                             "tensors": ["SCORES"]}}]}}},
    "batched": {"root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
        {"model": "plus1b"}]}}},
    "guarded": {"root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
        {"model": "fails", "name": "flaky", "fallback": {"model": "plus3"}}]}}},
    "valued": {**IO, "outputs": [{"name": "LABEL", "datatype": "INT64", "shape": [-1]}],
               "root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
                   {"model": "fails", "name": "flaky",
                    "fallback": {"value": {"LABEL": [-1]}}}]}}},
    "broken": {"root": "main", "nodes": {"main": {"kind": "sequence", "steps": [
        {"model": "plus1"}, {"model": "fails", "inputs": {"X": "Y"}, "name": "explodes"}]}}},
    "cyclic": {"root": "a", "nodes": {
        "a": {"kind": "sequence", "steps": [{"node": "b"}]},
        "b": {"kind": "sequence", "steps": [{"node": "a"}]}}},
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("pipeline-repo")

    def model(name: str, code: str, config: str) -> None:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
        (root / name / "model.yaml").write_text(textwrap.dedent(config))

    for k in (1, 2, 3):
        model(f"plus{k}", PLUS % (k, k), PLUS_YAML)
    # the same model with dynamic batching: requests that arrive within 50 ms run together
    model(
        "plus1b",
        PLUS % (1, 1),
        PLUS_YAML.replace("shape: [-1, 2]", "shape: [2]").replace("shape: [-1]}]", "shape: []}]")
        + "max_batch_size: 8\ndynamic_batching: {max_queue_delay_microseconds: 50000}\n",
    )
    two = "inputs: [{name: X, datatype: FP32, shape: [-1, 2]}]\n"
    model("scale10", SCALE, "runtime: python\ntrusted: true\n" + two
          + "outputs: [{name: Y, datatype: FP32, shape: [-1, 2]}]\n")  # fmt: skip
    model("logits", LOGITS, "runtime: python\ntrusted: true\n" + two
          + "outputs: [{name: SCORES, datatype: FP32, shape: [-1, 3]}]\n")  # fmt: skip
    model("fails", FAILS, "runtime: python\ntrusted: true\n" + two
          + "outputs: [{name: Y, datatype: FP32, shape: [-1, 2]}]\n")  # fmt: skip
    for name, doc in PIPELINES.items():
        (root / name / "1").mkdir(parents=True)
        config = {"platform": "pipeline", "pipeline": {**IO, **doc}}
        if name == "cyclic":
            config["required"] = False
        (root / name / "model.yaml").write_text(yaml.safe_dump(config))
    running = serve(model_repository=Path(root), http_port=0, block=False,
                    grpc={"enabled": False}, log_level="warning")  # fmt: skip
    assert running is not None
    with running:
        yield running


@pytest.fixture()
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as c:
        yield c


def infer(client: httpx.Client, name: str, x: list[list[float]],
          parameters: dict[str, Any] | None = None) -> httpx.Response:  # fmt: skip
    body: dict[str, Any] = {"inputs": [{"name": "X", "datatype": "FP32",
                                        "shape": [len(x), 2], "data": x}]}  # fmt: skip
    if parameters:
        body["parameters"] = parameters
    return client.post(f"/v2/models/{name}/infer", json=body)


def outputs(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o["data"] for o in answer.json()["outputs"]}


def test_a_sequence_feeds_each_step_the_previous_outputs(client: httpx.Client) -> None:
    assert outputs(infer(client, "chain", [[0.0, 1.0]]))["Y"] == [12.0, 22.0]
    meta = client.get("/v2/models/chain").json()
    assert meta["platform"] == "pipeline"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 2]}]


def test_a_switch_on_a_parameter_and_on_an_input_value(client: httpx.Client) -> None:
    x = [[1.0, 2.0]]
    assert outputs(infer(client, "route", x, {"tier": "gold"}))["Y"] == [10.0, 20.0]
    assert outputs(infer(client, "route", x, {"tier": "free"}))["Y"] == [2.0, 3.0]
    assert outputs(infer(client, "route", [[500.0, 0.0]]))["Y"] == [502.0, 2.0]


def test_majority_vote_and_weighted_mean(client: httpx.Client) -> None:
    # votes per row: plus1, plus2, plus1, plus3 -> 1
    assert outputs(infer(client, "vote", [[0.0, 0.0], [5.0, 5.0]]))["LABEL"] == [1, 1]
    # (3 * (x + 1) + 1 * (x + 3)) / 4 = x + 1.5
    assert outputs(infer(client, "wmean", [[0.0, 2.0]]))["Y"] == [1.5, 3.5]


def test_a_splitter_keeps_its_weights(client: httpx.Client) -> None:
    counts: Counter[int] = Counter()
    for _ in range(2000):
        counts[outputs(infer(client, "ab", [[0.0, 0.0]]))["LABEL"][0]] += 1
    share = counts[1] / 2000
    assert set(counts) == {1, 2}
    assert abs(share - 0.70) <= 0.03, counts
    print(f"\nsplitter 70/30 over 2,000 requests: {counts[1]} / {counts[2]}")


def test_processors_around_a_model(client: httpx.Client) -> None:
    got = outputs(infer(client, "post", [[0.5, 0.25]]))
    scores = np.exp([1.0, 3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum()
    assert got["SCORES_labels"] == ["dog", "fox"]
    assert got["SCORES_confidence"] == pytest.approx([scores.max()], rel=1e-5)
    bad = infer(client, "post", [[0.5, 7.0]])
    assert bad.status_code == 400
    assert "step 'main[0]' (processor 'validate')" in bad.json()["error"]
    assert "above the maximum 1" in bad.json()["error"]


def test_failing_steps_are_named_or_answered_by_their_fallback(client: httpx.Client) -> None:
    answer = infer(client, "broken", [[0.0, 0.0]])
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error.startswith("pipeline 'broken' step 'explodes' (model 'fails')"), error
    assert "fails on purpose" in error
    assert outputs(infer(client, "guarded", [[1.0, 1.0]]))["Y"] == [4.0, 4.0]
    assert outputs(infer(client, "valued", [[1.0, 1.0]]))["LABEL"] == [-1]
    m = metrics(client)
    assert value(m, "inferd_pipeline_fallbacks_total", model="guarded", step="flaky") == 1
    assert value(m, "inferd_pipeline_step_failures_total", model="broken", step="explodes") == 1
    assert value(m, "inferd_pipeline_step_seconds_count", model="chain", step="last") >= 1


def test_an_invalid_pipeline_is_unavailable_with_the_reason(client: httpx.Client) -> None:
    index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
    assert index["cyclic"]["state"] == "UNAVAILABLE"
    assert "the nodes form a cycle: a -> b -> a" in index["cyclic"]["reason"]
    assert index["chain"]["state"] == "READY"


def test_batching_still_applies_inside_a_step(server: RunningServer) -> None:
    """Eight pipeline requests at once: the step's model runs them in fewer executions."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> list[float]:
        with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as c:
            return outputs(infer(c, "batched", [[float(i), 0.0]]))["Y"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert answers == [[i + 1.0, 1.0] for i in range(8)]
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as c:
        m = metrics(c)
    runs = value(m, "inferd_inference_executions_total", model="plus1b", version="1")
    rows = value(m, "inferd_inference_batch_size_sum", model="plus1b", version="1")
    assert rows == 8 and runs < 8, (runs, rows)
