"""Deployment configuration → the data plane's ModelSpec, and sample-output comparison (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from inferd.control.catalog import compare_outputs
from inferd.control.deployments import deployment_spec, parse_config
from inferd.core.errors import InvalidInput
from inferd.core.records import Model, ModelVersion, VersionStatus, Visibility

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = Model("m1", "fraud", "u1", Visibility.PRIVATE, NOW, NOW)
VERSION = ModelVersion(
    "v1", "m1", 3, VersionStatus.READY, NOW,
    inputs=({"name": "x", "datatype": "FP32", "shape": [-1, 4]},),
    outputs=({"name": "y", "datatype": "INT64", "shape": [-1]},),
)  # fmt: skip


def test_defaults() -> None:
    spec = deployment_spec(MODEL, VERSION, parse_config(None), trusted=False)
    assert spec.name == "fraud" and spec.instances == 1 and spec.max_batch_size == 0
    assert spec.inputs[0].shape == (-1, 4) and spec.required is False and spec.trusted is False
    # the server parses none of an untrusted owner's files; a trusted owner's it may
    assert spec.untrusted_files is True and spec.network is False
    trusted = deployment_spec(MODEL, VERSION, parse_config(None), trusted=True)
    assert trusted.untrusted_files is False


def test_batching_strips_the_batch_dimension() -> None:
    batching = {"max_batch_size": 8, "max_queue_delay_microseconds": 500,
                "preferred_batch_sizes": [4, 8], "max_queue_size": 16}  # fmt: skip
    cfg = parse_config({"min_replicas": 2, "max_replicas": 4, "instance_kind": "thread",
                        "batching": batching})  # fmt: skip
    spec = deployment_spec(MODEL, VERSION, cfg, trusted=True)
    assert spec.instances == 2 and spec.instance_kind == "thread" and spec.trusted
    assert spec.max_batch_size == 8 and spec.inputs[0].shape == (4,)
    assert spec.batching is not None and spec.batching.max_queue_delay_us == 500
    assert spec.batching.preferred_batch_sizes == (4, 8) and spec.max_queue_size == 16


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("nope", "config"),
        ({"replicas": 2}, "config.replicas"),
        ({"min_replicas": -1}, "config.min_replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "config.max_replicas"),
        ({"max_replicas": 0}, "config.max_replicas"),
        ({"target_concurrency": 0}, "config.target_concurrency"),
        ({"scale_to_zero_after_s": -5}, "config.scale_to_zero_after_s"),
        ({"batching": {"max_queue_delay": 5}}, "config.batching.max_queue_delay"),
        ({"resources": {"cpu": -1}}, "config.resources.cpu"),
        ({"resources": {"disk": 1}}, "config.resources.disk"),
        ({"instance_kind": "fiber"}, "config.instance_kind"),
        ({"min_replicas": True}, "config.min_replicas"),
    ],
)
def test_bad_config_names_the_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_config(raw)
    assert e.value.message.startswith(field), e.value.message


def test_batching_needs_a_variable_first_dimension() -> None:
    fixed = ModelVersion("v", "m1", 1, VersionStatus.READY, NOW,
                         inputs=({"name": "x", "datatype": "FP32", "shape": [1, 4]},),
                         outputs=VERSION.outputs)  # fmt: skip
    with pytest.raises(InvalidInput, match=r"max_batch_size: input 'x'"):
        deployment_spec(MODEL, fixed, parse_config({"batching": {"max_batch_size": 4}}), False)
    with pytest.raises(InvalidInput, match="need max_batch_size"):
        deployment_spec(
            MODEL, VERSION, parse_config({"batching": {"max_queue_delay_microseconds": 9}}), False
        )
    # a queue cap alone is fine: it applies without batching too
    spec = deployment_spec(MODEL, VERSION, parse_config({"batching": {"max_queue_size": 4}}), False)
    assert spec.max_queue_size == 4 and spec.batching is None


def _out(name: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"outputs": [{"name": name, "shape": shape, "data": data}]}


def test_compare_outputs() -> None:
    assert compare_outputs(_out("y", [2], [1.0, 2.0]), _out("y", [2], [1.0, 2.0000001])) == []
    assert compare_outputs(_out("y", [2], [1.0, 2.0]), _out("y", [2], [1.0, 2.1])) == [
        "output 'y': values differ"
    ]
    assert "shape" in compare_outputs(_out("y", [2], [1, 2]), _out("y", [1, 2], [1, 2]))[0]
    assert compare_outputs(_out("y", [1], [1]), _out("z", [1], [1])) == ["output 'y' is missing"]
    assert compare_outputs(_out("s", [1], ["a"]), _out("s", [1], ["a"])) == []
    assert compare_outputs(_out("s", [1], ["a"]), _out("s", [1], ["b"])) != []


def test_replica_bounds_and_resources_reach_the_spec() -> None:
    fixed = deployment_spec(MODEL, VERSION, parse_config({"min_replicas": 2, "max_replicas": 2}),
                            False)  # fmt: skip
    assert fixed.instances == 2 and fixed.autoscaling is None
    cfg = parse_config({"min_replicas": 0, "max_replicas": 3, "target_concurrency": 4,
                        "scale_to_zero_after_s": 60,
                        "resources": {"cpu": 1, "memory": 2**30, "gpu": 0}})  # fmt: skip
    spec = deployment_spec(MODEL, VERSION, cfg, False)
    a = spec.autoscaling
    assert a is not None and (a.min_replicas, a.max_replicas) == (0, 3)
    assert a.target_concurrency == 4 and a.scale_to_zero_after_s == 60 and spec.instances == 1
    assert spec.resources.memory_bytes == 2**30 and spec.resources.gpu == 0
    with pytest.raises(InvalidInput, match="scale_to_zero_after_s"):
        deployment_spec(MODEL, VERSION, parse_config({"scale_to_zero_after_s": 5}), False)
