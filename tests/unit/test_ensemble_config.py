"""Triton ensemble configurations (`core/ensemble.py` through `parse_model_config`): what is
accepted, the order steps run in, and every mistake refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.core.errors import InvalidInput
from inferd.core.spec import parse_model_config, spec_to_config


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: Any = -1
         ) -> dict[str, Any]:  # fmt: skip
    return {"model_name": model, "model_version": version, "input_map": inputs,
            "output_map": outputs}  # fmt: skip


def config(steps: list[dict[str, Any]], inputs: tuple[str, ...] = ("IN",),
           outputs: tuple[str, ...] = ("OUT",)) -> dict[str, Any]:  # fmt: skip
    return {
        "platform": "ensemble",
        "inputs": [{"name": n, "datatype": "FP32", "shape": [4]} for n in inputs],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [4]} for n in outputs],
        "ensemble_scheduling": {"step": steps},
    }


def test_a_chain_runs_in_order_and_independent_steps_share_a_wave() -> None:
    spec = parse_model_config("e", config([
        step("post", {"x": "a_out"}, {"y": "OUT"}),  # listed first, runs last
        step("pre", {"x": "IN"}, {"y": "mid"}, version=2),
        step("a", {"x": "mid"}, {"y": "a_out"}),
        step("b", {"x": "mid"}, {"y": "OUT2"}),
    ], outputs=("OUT", "OUT2")))  # fmt: skip
    e = spec.ensemble
    assert e is not None and spec.runtime == "ensemble"
    assert e.waves == ((1,), (2, 3), (0,))
    assert e.steps[1].version == "2" and e.steps[0].version is None
    assert parse_model_config("e", spec_to_config(spec)) == spec


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [
                step("m", {"x": "IN"}, {"y": "a"}),
                step("n", {"x": "a"}, {"y": "OUT"}),
                step("k", {"x": "OUT"}, {"y": "a"}),
            ],
            "writes 'a', which step 0 writes too",
        ),
        (
            [step("m", {"x": "nope"}, {"y": "OUT"})],
            r"step\[0\].input_map' reads 'nope', which is neither",
        ),
        ([step("m", {"x": "IN"}, {"y": "IN"})], "writes 'IN', an input of the ensemble"),
        ([step("m", {"x": "IN"}, {"y": "other"})], "step\\[0\\]' writes nothing the ensemble"),
        (
            [step("m", {"x": "IN"}, {"y": "a"}), step("n", {"x": "a"}, {"y": "b"})],
            "step\\[1\\]' writes nothing",
        ),
        (
            [
                step("m", {"x": "IN", "z": "b"}, {"y": "a"}),
                step("n", {"x": "a"}, {"y": "b"}),
                step("o", {"x": "a"}, {"y": "OUT"}),
            ],
            "has a cycle: step 0 \\(m\\), step 1 \\(n\\)",
        ),
        ([step("e", {"x": "IN"}, {"y": "OUT"})], "an ensemble cannot run itself"),
        ([step("m", {"x": "IN"}, {"y": "OUT"}, version=0)], "model_version' must be a version"),
        ([step("bad name!", {"x": "IN"}, {"y": "OUT"})], r"step\[0\].model_name'"),
        ([step("m", {}, {"y": "OUT"})], r"step\[0\].input_map' must be a non-empty mapping"),
        (
            [
                {
                    "model_name": "m",
                    "input_map": {"x": "IN"},
                    "output_map": {"y": "OUT"},
                    "priority": 1,
                }
            ],
            r"unknown field\(s\) in 'ensemble_scheduling.step\[0\]': priority",
        ),
        ([], "'ensemble_scheduling.step' must be a non-empty list"),
    ],
)
def test_mistakes_are_refused_naming_the_field(steps: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_model_config("e", config(steps))


def test_outputs_and_inputs_must_be_wired() -> None:
    with pytest.raises(InvalidInput, match="output 'OUT2' of the ensemble is written by no step"):
        parse_model_config("e", config([step("m", {"x": "IN"}, {"y": "OUT"})],
                                        outputs=("OUT", "OUT2")))  # fmt: skip
    with pytest.raises(InvalidInput, match="input 'IN2' of the ensemble is read by no step"):
        parse_model_config("e", config([step("m", {"x": "IN"}, {"y": "OUT"})],
                                       inputs=("IN", "IN2")))  # fmt: skip


def test_platform_and_scheduling_go_together() -> None:
    raw = config([step("m", {"x": "IN"}, {"y": "OUT"})])
    with pytest.raises(InvalidInput, match="'platform: ensemble' needs 'ensemble_scheduling'"):
        parse_model_config("e", {k: v for k, v in raw.items() if k != "ensemble_scheduling"})
    with pytest.raises(InvalidInput, match="'ensemble_scheduling' needs 'platform: ensemble'"):
        parse_model_config("e", {**raw, "platform": "onnxruntime_onnx"})
    with pytest.raises(InvalidInput, match="must declare its 'inputs' and 'outputs'"):
        parse_model_config("e", {k: v for k, v in raw.items() if k != "inputs"})
    with pytest.raises(InvalidInput, match="'runtime': a model with 'platform: ensemble' has none"):
        parse_model_config("e", {**raw, "runtime": "onnx"})
