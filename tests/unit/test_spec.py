"""model.yaml parsing and version policies."""

from __future__ import annotations

import pytest

from inferd.core.errors import InvalidInput
from inferd.core.spec import (
    TensorSpec,
    VersionPolicy,
    check_name,
    parse_model_config,
    spec_to_config,
)


def test_full_config() -> None:
    spec = parse_model_config(
        "simple",
        {
            "runtime": "onnx",
            "max_batch_size": 8,
            "inputs": [{"name": "INPUT0", "datatype": "TYPE_INT32", "dims": [16]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [-1], "optional": True}],
            "version_policy": {"specific": {"versions": [1, 3]}},
            "parameters": {"intra_op_threads": 1},
            "trusted": True,
            "required": False,
            "labels": ["a", "b"],
        },
    )
    assert spec.runtime == "onnx" and spec.max_batch_size == 8
    assert spec.inputs == (TensorSpec("INPUT0", "INT32", (16,)),)
    assert spec.outputs == (TensorSpec("OUTPUT0", "BYTES", (-1,), True),)
    assert spec.version_policy == VersionPolicy("specific", 1, ("1", "3"))
    assert spec.parameters == {"intra_op_threads": 1}
    assert spec.trusted and not spec.required and spec.labels == ("a", "b")


def test_defaults_without_yaml() -> None:
    spec = parse_model_config("m", None)
    assert spec.runtime is None and spec.max_batch_size == 0 and spec.required
    assert spec.version_policy.select(["1", "10", "2"]) == ["10"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"inputs": {"a": 1}}, "inputs"),
        ({"inputs": [{"datatype": "FP32", "shape": [1]}]}, "inputs[0].name"),
        ({"inputs": [{"name": "a", "datatype": "FLOAT", "shape": [1]}]}, "inputs[0].datatype"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-2]}]}, "inputs[0].shape"),
        ({"outputs": [{"name": "a", "datatype": "FP32", "shape": [1]},
                      {"name": "a", "datatype": "FP32", "shape": [1]}]}, "outputs[1].name"),
        ({"version_policy": {"latest": 0}}, "version_policy.latest"),
        ({"version_policy": "newest"}, "version_policy"),
        ({"parameters": [1]}, "parameters"),
        ({"trusted": "yes"}, "trusted"),
        ({"runtme": "onnx"}, "runtme"),
        ({"name": "other"}, "name"),
    ],
)  # fmt: skip
def test_errors_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_model_config("m", raw)
    assert field in err.value.message


def test_liveness_timeout() -> None:
    assert parse_model_config("m", None).liveness_timeout_s == 5.0
    spec = parse_model_config("m", {"liveness_timeout_s": 1.5})
    assert spec.liveness_timeout_s == 1.5
    assert parse_model_config("m", spec_to_config(spec)) == spec  # what the worker is sent
    for bad in (0, -1, "5", True, None):
        with pytest.raises(InvalidInput, match="'liveness_timeout_s' must be a positive number"):
            parse_model_config("m", {"liveness_timeout_s": bad})


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("all", ["1", "2", "10"]), ({"latest": 2}, ["2", "10"]), ([2, 7], ["2"]),
     ({"latest": {"num_versions": 1}}, ["10"])],
)  # fmt: skip
def test_version_policies(policy: object, expected: list[str]) -> None:
    spec = parse_model_config("m", {"version_policy": policy})
    assert spec.version_policy.select(["10", "1", "2"]) == expected


@pytest.mark.parametrize(
    "name", ["..", "a/b", "../etc", ".hidden", "", "a" * 200, "a\x00b", "x..y"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


def test_good_names() -> None:
    for name in ("simple", "iris_onnx", "a.b-c_1", "M"):
        assert check_name(name) == name
