"""What a pipeline hands each of its model steps, seen at the seam where the data plane takes
the step (`StepRunner`): here a recording function in place of the data plane, since what is
checked is the request each step receives (its id, parameters, inputs and deadline), not how a
model answers it. The whole path with real models is in tests/integration/test_pipelines.py."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from inferd.core.errors import InvalidInput
from inferd.core.spec import parse_model_config
from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.pipeline import PipelineScheduler
from inferd.serving.stats import VersionStats

DOC = {
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 2]}],
    "root": "main",
    "nodes": {
        "main": {"kind": "sequence", "steps": [{"model": "a"}, {"node": "both"}]},
        "both": {"kind": "ensemble", "aggregate": "mean",
                 "steps": [{"model": "b", "version": 3}, {"model": "c"}]},
    },
}  # fmt: skip


def scheduler(calls: list[tuple[str, str | None, InferenceRequest]]) -> PipelineScheduler:
    spec = parse_model_config("p", {"platform": "pipeline", "pipeline": DOC})
    metrics = ServingMetrics(CollectorRegistry())

    async def run(name: str, version: str | None, request: InferenceRequest
                  ) -> InferenceResponse:  # fmt: skip
        calls.append((name, version, request))
        x = request.inputs[0].data
        add = {"a": 1.0, "b": 10.0, "c": 20.0}[name]
        return InferenceResponse(name, version or "1", [Tensor("Y", "FP32", x + add)])

    version = metrics.for_version("p", "1")
    return PipelineScheduler(spec, "p-1", VersionStats(), version, lambda: run,
                             lambda name, version: ["X"], metrics.pipeline)  # fmt: skip


async def test_every_step_gets_the_request_id_parameters_and_what_is_left_of_the_deadline(
) -> None:  # fmt: skip
    calls: list[tuple[str, str | None, InferenceRequest]] = []
    s = scheduler(calls)
    x = np.array([[0.0, 1.0]], dtype=np.float32)
    result = await s.submit({"X": x}, None, {"tier": "gold"}, 1, 30.0, None, "req-42")
    # a then (b, c) on a's answer; mean of (x + 1 + 10, x + 1 + 20)
    assert result.outputs["Y"].tolist() == [[16.0, 17.0]]
    assert [(n, v) for n, v, _ in calls] == [("a", None), ("b", "3"), ("c", None)]
    for _, _, request in calls:
        assert request.id == "req-42"
        assert request.parameters == {"tier": "gold"}
        assert request.timeout_s is not None and 0 < request.timeout_s <= 30.0
        assert [t.name for t in request.inputs] == ["X"]
    assert calls[1][2].inputs[0].data.tolist() == [[1.0, 2.0]]  # a's answer, wired by name


async def test_a_step_that_has_no_input_to_wire_is_named() -> None:
    calls: list[tuple[str, str | None, InferenceRequest]] = []
    spec = parse_model_config("p", {"platform": "pipeline", "pipeline": DOC})
    metrics = ServingMetrics(CollectorRegistry())
    s = PipelineScheduler(spec, "p-1", VersionStats(), metrics.for_version("p", "1"),
                          lambda: None,  # type: ignore[arg-type,return-value]
                          lambda name, version: ["A", "B"], metrics.pipeline)  # fmt: skip
    try:
        await s.submit({"X": np.zeros((1, 2), dtype=np.float32)}, None, None, 1, None)
    except InvalidInput as e:
        assert e.message.startswith("pipeline 'p' step 'main[0]' (model 'a'): ")
        assert "no tensor for input 'A'" in e.message
    else:
        raise AssertionError("the step ran without its inputs")
    assert calls == []
