"""Pipeline documents (`core/pipeline.py`) and built-in processors (`core/processors.py`): what
is accepted, conditions, wiring, and every mistake refused with the node and field named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inferd.core.errors import InvalidInput
from inferd.core.pipeline import parse_condition, parse_pipeline, wire
from inferd.core.processors import build


def doc(nodes: dict[str, Any], root: str = "main", **extra: Any) -> dict[str, Any]:
    return {"format": 1, "root": root, "nodes": nodes, **extra}


def seq(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "sequence", "steps": list(steps)}


def test_a_document_with_every_node_kind_parses_and_keeps_its_layout() -> None:
    raw = doc({
        "main": seq({"processor": "softmax"}, {"node": "route"}),
        "route": {"kind": "switch", "steps": [
            {"when": {"select": "$.parameters.tier", "eq": "gold"}, "node": "vote"},
            {"node": "split"}]},
        "vote": {"kind": "ensemble", "aggregate": "majority_vote",
                 "steps": [{"model": "a"}, {"model": "b", "version": 2}, {"model": "c"}]},
        "split": {"kind": "splitter", "steps": [{"model": "a", "weight": 9},
                                                {"model": "b", "weight": 1}]},
    }, layout={"main": {"x": 10, "y": 20}})  # fmt: skip
    p = parse_pipeline(raw)
    assert p.root == "main" and set(p.nodes) == {"main", "route", "vote", "split"}
    assert ("b", "2") in p.models() and p.document["layout"]["main"] == {"x": 10, "y": 20}
    assert p.nodes["vote"].steps[1].label == "vote[1]"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            doc({"a": seq({"node": "b"}), "b": seq({"node": "a"})}, root="a"),
            "nodes.a: the nodes form a cycle: a -> b -> a",
        ),
        (
            doc({"main": seq({"model": "m"}), "lost": seq({"model": "m"})}),
            "nodes.lost: not reachable from the root 'main'",
        ),
        (doc({"main": seq({"node": "nowhere"})}), r"nodes.main.steps\[0\].node: no node named"),
        (doc({"main": {"kind": "loop", "steps": [{"model": "m"}]}}), "nodes.main.kind: must be"),
        (doc({"main": seq({"model": "m", "node": "x"})}), "needs exactly one of"),
        (
            doc({"main": seq({"model": "m", "weight": 3})}),
            r"steps\[0\].weight: only a splitter's steps",
        ),
        (
            doc({"main": seq({"model": "m", "when": {"select": "$.parameters.x", "eq": 1}})}),
            r"steps\[0\].when: only a switch's steps",
        ),
        (
            doc({"main": {"kind": "switch", "steps": [{"model": "m"}, {"model": "n"}]}}),
            "one step without 'when', the last",
        ),
        (
            doc({"main": {"kind": "splitter", "steps": [{"model": "m", "weight": 0}]}}),
            "a splitter needs a weight > 0",
        ),
        (
            doc(
                {
                    "main": {
                        "kind": "ensemble",
                        "aggregate": "weighted_mean",
                        "steps": [{"model": "m"}, {"model": "n"}],
                        "weights": [1],
                    }
                }
            ),
            "nodes.main.weights: weighted_mean needs 2 weights",
        ),
        (
            doc({"main": {"kind": "ensemble", "aggregate": "median", "steps": [{"model": "m"}]}}),
            "nodes.main.aggregate",
        ),
        (doc({"main": seq({"model": "m", "data": "$other"})}), r"steps\[0\].data"),
        (doc({"main": seq({"model": "m", "inputs": {"X": 3}})}), r"steps\[0\].inputs"),
        (
            doc({"main": seq({"model": "m", "fallback": {"node": "main"}})}),
            "a fallback is a model or a value",
        ),
        (
            doc({"main": seq({"model": "m", "name": "x"}, {"model": "n", "name": "x"})}),
            "two steps are named 'x'",
        ),
        (doc({"main": seq({"model": "m"})}, root="other"), "root: no node named 'other'"),
        ({"format": 2, "nodes": {"main": seq({"model": "m"})}}, "format: this server reads"),
        ({"nodes": {}}, "nodes: must be a non-empty mapping"),
    ],
)
def test_mistakes_are_refused_naming_the_node_and_field(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_pipeline(raw)


def test_conditions_select_parameters_and_input_values() -> None:
    tensors = {"x": np.array([[0.2, 0.9]], dtype=np.float32), "s": np.array([b"vip"], dtype=object)}
    assert parse_condition({"select": "$.inputs.x[0][1]", "gt": 0.5}, "w").holds(None, tensors)
    assert not parse_condition({"select": "$.inputs.x[0][0]", "gt": 0.5}, "w").holds(None, tensors)
    assert parse_condition({"select": "$.inputs.s[0]", "in": ["vip", "gold"]}, "w").holds(
        None, tensors
    )
    assert parse_condition({"select": "$.parameters.t", "exists": False}, "w").holds({}, tensors)
    both = parse_condition({"all": [{"select": "$.parameters.t", "eq": "gold"},
                                    {"select": "$.inputs.x[0][1]", "le": 1}]}, "w")  # fmt: skip
    assert both.holds({"t": "gold"}, tensors) and not both.holds({"t": "free"}, tensors)
    # an index out of range, or a tensor that is not there, does not hold (never raises)
    assert not parse_condition({"select": "$.inputs.x[5]", "eq": 1}, "w").holds(None, tensors)
    for bad, why in (({"select": "x", "eq": 1}, "is not a selector"),
                     ({"select": "$.parameters.t[0]", "eq": 1}, "a parameter takes no index"),
                     ({"select": "$.parameters.t", "eq": 1, "ne": 2}, "exactly one comparison"),
                     ({"select": "$.parameters.t", "gt": [1]}, "must be a number")):  # fmt: skip
        with pytest.raises(InvalidInput, match=why):
            parse_condition(bad, "w")


def test_a_step_is_wired_by_name_or_by_its_only_tensor() -> None:
    p = parse_pipeline(doc({"main": seq({"model": "m"}, {"model": "n", "inputs": {"A": "Y"}})}))
    first, second = p.nodes["main"].steps
    assert wire(first, {"X"}, ["X"]) == {"X": "X"}
    assert wire(first, {"Y"}, ["X"]) == {"X": "Y"}  # the only tensor, to the only input
    assert wire(second, {"Y"}, ["A"]) == {"A": "Y"}
    assert wire(first, {"P", "Q"}, None) == {"P": "P", "Q": "Q"}  # unknown model: all by name
    with pytest.raises(InvalidInput, match=r"^inputs: no tensor for input 'B'"):
        wire(first, {"A", "Y"}, ["A", "B"])
    with pytest.raises(InvalidInput, match=r"^inputs\.A: no tensor 'Y' here \(have: X\)"):
        wire(second, {"X"}, ["A"])


def test_processors_compute_known_answers() -> None:
    x = np.array([[1.0, 2.0], [3.0, np.nan]], dtype=np.float32)
    imputed = build("impute", {"strategy": "mean", "reference": [[1, 10], [3, 20]]}, "s")({"x": x})
    assert imputed["x"].tolist() == [[1.0, 2.0], [3.0, 15.0]]
    std = build("standardize", {"mean": [1, 2], "std": [2, 4]}, "s")({"x": np.ones((1, 2))})
    assert std["x"].tolist() == [[0.0, -0.25]]
    norm = build("normalize", {"min": 0, "max": 4}, "s")({"x": np.array([2.0])})
    assert norm["x"].tolist() == [0.5]
    hot = build("one_hot", {"classes": ["a", "b", "c"]}, "s")(
        {"c": np.array([b"b", b"c"], dtype=object)}
    )
    assert hot["c"].tolist() == [[0, 1, 0], [0, 0, 1]]
    enc = build("label_encode", {"classes": ["lo", "hi"]}, "s")(
        {"c": np.array([b"hi", b"lo"], dtype=object)}
    )
    assert enc["c"].tolist() == [1, 0]
    ref = [[0.0], [1.0], [2.0], [3.0], [4.0]]
    flags = build("outliers", {"method": "iqr", "reference": ref}, "s")(
        {"v": np.array([[2.0], [40.0]])}
    )
    assert flags["v_outlier"].tolist() == [False, True]
    z = build("outliers", {"method": "zscore", "reference": ref, "threshold": 2}, "s")(
        {"v": np.array([[2.0], [9.0]])}
    )
    assert z["v_outlier"].tolist() == [False, True]
    soft = build("softmax", {}, "s")({"p": np.array([[0.0, 0.0]])})
    assert soft["p"].tolist() == [[0.5, 0.5]]
    top = build("top_k", {"k": 1, "labels": ["a", "b"]}, "s")({"p": np.array([[0.1, 0.9]])})
    assert top["p_indices"].tolist() == [[1]] and top["p_labels"].tolist() == [[b"b"]]
    conf = build("confidence", {}, "s")({"p": np.array([[0.5, 0.5]])})
    assert conf["p_confidence"].tolist() == [0.5]
    assert conf["p_entropy"][0] == pytest.approx(np.log(2), rel=1e-6)
    labels = build("label_map", {"labels": ["no", "yes"]}, "s")({"k": np.array([1, 0])})
    assert labels["k"].tolist() == [b"yes", b"no"]
    fmt = build("format", {"select": ["a"], "rename": {"a": "b"}}, "s")(
        {"a": np.ones(1), "c": np.ones(1)}
    )
    assert list(fmt) == ["b"]
    nested = build("format", {"rename": {"p": "score"}, "nest": {"result": ["p", "k"]}}, "s")(
        {"p": np.ones(1), "k": np.ones(1), "z": np.ones(1)}
    )
    assert list(nested) == ["result.score", "result.k", "z"]


def test_validate_names_the_tensor_and_rule() -> None:
    check = build("validate", {"rules": {"age": {"min": 0, "max": 130},
                                         "kind": {"enum": ["a", "b"]},
                                         "opt": {"required": False}}}, "s")  # fmt: skip
    ok = {"age": np.array([30.0]), "kind": np.array([b"a"], dtype=object)}
    assert check(ok) is ok
    with pytest.raises(InvalidInput, match="input 'age': values above the maximum 130"):
        check({**ok, "age": np.array([200.0])})
    with pytest.raises(InvalidInput, match="input 'kind': b'z' is not one of"):
        check({**ok, "kind": np.array([b"z"], dtype=object)})
    with pytest.raises(InvalidInput, match="input 'age' is required"):
        check({"kind": ok["kind"]})
    with pytest.raises(InvalidInput, match="must be finite"):
        check({**ok, "age": np.array([np.nan])})


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("nope", {}, "s.processor: no built-in processor 'nope'"),
        ("softmax", {"axis": "x"}, "s.config.axis: must be an integer"),
        ("standardize", {"std": 0}, "s.config.std: must be > 0"),
        ("normalize", {"min": 2, "max": 1}, "every max must be greater"),
        ("impute", {"strategy": "mode"}, "s.config.strategy"),
        ("top_k", {"k": 0}, "s.config.k"),
        ("outliers", {"method": "zscore", "reference": [[1.0]]}, "at least 2 rows"),
        ("format", {"select": []}, "s.config.select"),
        ("validate", {"rules": {"x": {"between": 1}}}, "takes min, max"),
        ("softmax", {"colour": 1}, r"unknown field\(s\): colour"),
    ],
)
def test_processor_configs_are_checked(name: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build(name, config, "s")
