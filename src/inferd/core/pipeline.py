"""Inference graphs: the pipeline document, parsed and checked (pure).

A pipeline is served as one model. Its document (JSON, or YAML under `pipeline:` in a
repository's `model.yaml` with `platform: pipeline`) is versioned (`format: 1`) and is what the
console's flow editor draws and edits (`layout` keeps its node positions):

    {"format": 1,
     "inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
     "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
     "root": "main",
     "nodes": {
       "main": {"kind": "sequence", "steps": [
           {"processor": "standardize", "config": {"mean": [...], "std": [...]}},
           {"node": "route"}]},
       "route": {"kind": "switch", "steps": [
           {"when": {"select": "$.parameters.tier", "eq": "gold"}, "model": "big"},
           {"model": "small"}]},
       ...},
     "layout": {"main": {"x": 0, "y": 0}}}

Node kinds, in the spirit of KServe's InferenceGraph:
- `sequence`: steps in order; each step reads what the step before it produced (`data:
  "$request"`: the pipeline's request instead); the last step's outputs are the node's.
- `switch`: the first step whose `when` holds runs (a step without `when` is the default).
- `ensemble`: every step runs on the node's input, concurrently; `aggregate` combines them:
  `concat` (along `axis`), `mean`, `weighted_mean` (`weights`, one per step), `majority_vote`
  (per element, the most frequent value; ties go to the smallest), or none (every step's outputs,
  named `<step>.<output>`).
- `splitter`: one step, drawn at random by `weight`.

A step is one of `{"model": name, "version": v}`, `{"node": name}` or
`{"processor": name, "config": {...}}` (`core/processors.py`), with optional `name` (for
errors and metrics), `inputs` (`{step input: tensor}`; default: tensors of the same name, or the
only tensor to the only input), `outputs` (`{step output: tensor}`: renames) and `fallback` (a
`{"model": ...}` to call, or `{"value": {...tensors...}}` to answer, when the step fails).

Conditions (`when`) are declarative, never evaluated as code: `select` is `$.parameters.<name>`
or `$.inputs.<tensor>[i][j]...` (the node's input tensors), compared with one of `eq`, `ne`,
`gt`, `ge`, `lt`, `le`, `in`, `exists`; `all: [...]` and `any: [...]` combine conditions.

Every error names the node and field: `nodes.route.steps[1].when.select: ...`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferd.core.errors import InvalidField, InvalidInput

FORMAT = 1
KINDS = ("sequence", "switch", "ensemble", "splitter")
AGGREGATES = ("concat", "mean", "weighted_mean", "majority_vote")
OPS = ("eq", "ne", "gt", "ge", "lt", "le", "in", "exists")
_SELECT = re.compile(r"^\$\.(parameters|inputs)\.([A-Za-z0-9_.\-:]+?)((?:\[\d+\])*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Condition:
    """`select` compared with `op` to `value`; or `all`/`any` of `parts`."""

    op: str
    source: str = ""  # "parameters" | "inputs"
    key: str = ""
    index: tuple[int, ...] = ()
    value: Any = None
    parts: tuple[Condition, ...] = ()

    def holds(self, parameters: Mapping[str, Any] | None, tensors: Mapping[str, Any]) -> bool:
        if self.op == "all":
            return all(p.holds(parameters, tensors) for p in self.parts)
        if self.op == "any":
            return any(p.holds(parameters, tensors) for p in self.parts)
        found, got = _select(self, parameters, tensors)
        if self.op == "exists":
            return found == bool(self.value)
        if not found:
            return False
        try:
            return _compare(self.op, got, self.value)
        except TypeError:
            return False


def _select(c: Condition, parameters: Mapping[str, Any] | None,
            tensors: Mapping[str, Any]) -> tuple[bool, Any]:  # fmt: skip
    if c.source == "parameters":
        params = parameters or {}
        return (c.key in params), params.get(c.key)
    if c.key not in tensors:
        return False, None
    value = tensors[c.key]
    try:
        for i in c.index:
            value = value[i]
    except (IndexError, TypeError):
        return False, None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return True, value


def _compare(op: str, got: Any, want: Any) -> bool:
    if op == "eq":
        return bool(got == want)
    if op == "ne":
        return bool(got != want)
    if op == "in":
        return got in want
    if op == "gt":
        return bool(got > want)
    if op == "ge":
        return bool(got >= want)
    if op == "lt":
        return bool(got < want)
    return bool(got <= want)


@dataclass(frozen=True, slots=True)
class Step:
    #: "model" | "node" | "processor"
    kind: str
    #: The model, node or processor it names.
    target: str
    #: How errors and metrics name it: `name`, else `<node>[<i>]`.
    label: str
    version: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    #: (step input, tensor) pairs; empty: by name, or the only tensor to the only input.
    inputs: tuple[tuple[str, str], ...] = ()
    #: (step output, tensor) renames; outputs not named keep their names.
    outputs: tuple[tuple[str, str], ...] = ()
    #: Read the pipeline's request rather than the previous step's outputs (sequence only).
    from_request: bool = False
    when: Condition | None = None
    weight: float = 0.0
    fallback: Step | None = None
    #: `fallback: {"value": ...}`: tensors to answer with when the step fails.
    fallback_value: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    kind: str
    steps: tuple[Step, ...]
    aggregate: str | None = None
    axis: int = -1
    weights: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Pipeline:
    root: str
    nodes: Mapping[str, Node]
    #: The document as given (layout included): what is stored and shown back.
    document: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def models(self) -> list[tuple[str, str | None]]:
        """Every (model, version) a step or fallback names."""
        out = []
        for node in self.nodes.values():
            for step in node.steps:
                for s in (step, step.fallback):
                    if s is not None and s.kind == "model":
                        out.append((s.target, s.version))
        return out

    def processors(self) -> list[tuple[str, Step]]:
        """(field, step) of every processor step, `nodes.<node>.steps[<i>]` (the caller checks
        the name and config: errors name the field)."""
        return [(f"nodes.{n.name}.steps[{i}]", s) for n in self.nodes.values()
                for i, s in enumerate(n.steps) if s.kind == "processor"]  # fmt: skip


def _err(where: str, message: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}")


def _str(raw: Mapping[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _err(f"{where}.{key}", "must be a non-empty string")
    return value


def _pairs(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in raw.items()
    ):
        raise _err(where, "must map tensor names to tensor names")
    return tuple(raw.items())


def parse_condition(raw: Any, where: str) -> Condition:
    if not isinstance(raw, dict):
        raise _err(where, "must be a mapping such as {select: $.parameters.tier, eq: gold}")
    for combinator in ("all", "any"):
        if combinator in raw:
            parts = raw[combinator]
            if set(raw) != {combinator} or not isinstance(parts, list) or not parts:
                raise _err(where, f"'{combinator}' takes a non-empty list of conditions, alone")
            return Condition(
                combinator,
                parts=tuple(
                    parse_condition(p, f"{where}.{combinator}[{i}]") for i, p in enumerate(parts)
                ),
            )
    select = raw.get("select")
    if not isinstance(select, str):
        raise _err(f"{where}.select", "must be a selector like $.parameters.tier or "
                   "$.inputs.x[0][1]")  # fmt: skip
    m = _SELECT.match(select)
    if m is None:
        raise _err(f"{where}.select", f"'{select}' is not a selector like $.parameters.tier "
                   "or $.inputs.x[0][1]")  # fmt: skip
    source, key, idx = m.group(1), m.group(2), m.group(3)
    if source == "parameters" and idx:
        raise _err(f"{where}.select", "a parameter takes no index")
    ops = [k for k in raw if k != "select"]
    if len(ops) != 1 or ops[0] not in OPS:
        raise _err(where, f"needs exactly one comparison of {', '.join(OPS)}")
    op = ops[0]
    value = raw[op]
    if op == "in" and not isinstance(value, list):
        raise _err(f"{where}.in", "must be a list")
    if op in ("gt", "ge", "lt", "le") and (
        isinstance(value, bool) or not isinstance(value, int | float | str)
    ):
        raise _err(f"{where}.{op}", "must be a number or a string")
    if op == "exists" and not isinstance(value, bool):
        raise _err(f"{where}.exists", "must be true or false")
    index = tuple(int(i) for i in re.findall(r"\[(\d+)\]", idx))
    return Condition(op, source, key, index, value)


def _step(raw: Any, node: str, kind: str, i: int, nodes: Mapping[str, Any],
          fallback: bool = False) -> Step:  # fmt: skip
    where = f"nodes.{node}.steps[{i}]" + (".fallback" if fallback else "")
    if not isinstance(raw, dict):
        raise _err(where, "must be a mapping")
    known = {"model", "version", "node", "processor", "config", "name", "inputs", "outputs",
             "data", "when", "weight", "fallback"}  # fmt: skip
    unknown = sorted(set(raw) - known - ({"value"} if fallback else set()))
    if unknown:
        raise _err(where, f"unknown field(s): {', '.join(unknown)}")
    targets = [k for k in ("model", "node", "processor") if k in raw]
    if len(targets) != 1:
        raise _err(where, "needs exactly one of 'model', 'node' or 'processor'")
    what = targets[0]
    target = _str(raw, what, where)
    assert target is not None
    if what == "node":
        if target not in nodes:
            raise _err(f"{where}.node", f"no node named '{target}'")
        if fallback:
            raise _err(f"{where}.node", "a fallback is a model or a value")
    elif what == "model" and not _NAME.match(target):
        raise _err(f"{where}.model", f"'{target}' is not a model name")
    version = raw.get("version")
    if version is not None:
        if what != "model" or isinstance(version, bool) or not isinstance(version, int | str):
            raise _err(f"{where}.version", "must be a model version (a model step's)")
        version = str(version)
    config = raw.get("config", {})
    if not isinstance(config, dict) or (config and what != "processor"):
        raise _err(f"{where}.config", "must be a mapping, and only a processor takes one")
    name = _str(raw, "name", where, required=False)
    data = raw.get("data", "$previous")
    if data not in ("$previous", "$request"):
        raise _err(f"{where}.data", "must be '$previous' or '$request'")
    if data == "$request" and kind != "sequence":
        raise _err(f"{where}.data", "only a sequence's steps choose what they read")
    when = None
    if "when" in raw:
        if kind != "switch":
            raise _err(f"{where}.when", "only a switch's steps have conditions")
        when = parse_condition(raw["when"], f"{where}.when")
    weight = raw.get("weight", 0.0)
    if "weight" in raw and kind != "splitter":
        raise _err(f"{where}.weight", "only a splitter's steps have weights")
    if kind == "splitter" and (
        isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0
    ):
        raise _err(f"{where}.weight", "must be a number >= 0")
    fb: Step | None = None
    fb_value: Mapping[str, Any] | None = None
    if "fallback" in raw:
        if fallback:
            raise _err(f"{where}.fallback", "a fallback has no fallback")
        spec = raw["fallback"]
        if isinstance(spec, dict) and set(spec) == {"value"}:
            if not isinstance(spec["value"], dict) or not spec["value"]:
                raise _err(f"{where}.fallback.value", "must map output names to values")
            fb_value = spec["value"]
        else:
            fb = _step(spec, node, kind, i, nodes, fallback=True)
    return Step(what, target, name or f"{node}[{i}]", version, config,
                _pairs(raw.get("inputs"), f"{where}.inputs"),
                _pairs(raw.get("outputs"), f"{where}.outputs"),
                data == "$request", when, float(weight), fb, fb_value)  # fmt: skip


def _node(name: str, raw: Any, nodes: Mapping[str, Any]) -> Node:
    where = f"nodes.{name}"
    if not isinstance(raw, dict):
        raise _err(where, "must be a mapping with 'kind' and 'steps'")
    unknown = sorted(set(raw) - {"kind", "steps", "aggregate", "axis", "weights"})
    if unknown:
        raise _err(where, f"unknown field(s): {', '.join(unknown)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _err(f"{where}.kind", f"must be one of {', '.join(KINDS)}")
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise _err(f"{where}.steps", "must be a non-empty list")
    steps = tuple(_step(s, name, kind, i, nodes) for i, s in enumerate(raw_steps))
    labels = [s.label for s in steps]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise _err(f"{where}.steps", f"two steps are named '{dup}'")
    aggregate = raw.get("aggregate")
    if aggregate is not None and (kind != "ensemble" or aggregate not in AGGREGATES):
        raise _err(f"{where}.aggregate",
                   f"an ensemble's aggregate is one of {', '.join(AGGREGATES)}")  # fmt: skip
    axis = raw.get("axis", -1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise _err(f"{where}.axis", "must be an integer")
    weights = raw.get("weights", [])
    if aggregate == "weighted_mean":
        if (not isinstance(weights, list) or len(weights) != len(steps) or not all(
                isinstance(w, int | float) and not isinstance(w, bool) and w >= 0
                for w in weights) or not sum(weights)):  # fmt: skip
            raise _err(f"{where}.weights", f"weighted_mean needs {len(steps)} weights >= 0 "
                       "(one per step), not all 0")  # fmt: skip
    elif "weights" in raw:
        raise _err(f"{where}.weights", "only aggregate: weighted_mean takes weights")
    if kind == "switch":
        defaults = [i for i, s in enumerate(steps) if s.when is None]
        if len(defaults) > 1 or (defaults and defaults[0] != len(steps) - 1):
            raise _err(f"{where}.steps", "a switch may have one step without 'when', the last")
    if kind == "splitter" and not sum(s.weight for s in steps):
        raise _err(f"{where}.steps", "a splitter needs a weight > 0 on at least one step")
    return Node(name, kind, steps, aggregate, axis, tuple(float(w) for w in weights))


def parse_pipeline(raw: Any) -> Pipeline:
    """Check a pipeline document's structure (not the models it names: `serving/pipeline.py`
    checks those against what is served) and build it."""
    if not isinstance(raw, dict):
        raise InvalidInput("pipeline: must be a mapping with 'root' and 'nodes'")
    unknown = sorted(set(raw) - {"format", "root", "nodes", "layout", "inputs", "outputs",
                                 "description"})  # fmt: skip
    if unknown:
        raise InvalidInput(f"pipeline: unknown field(s): {', '.join(unknown)}")
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise InvalidInput(f"format: this server reads pipeline documents of format {FORMAT}")
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise InvalidInput("nodes: must be a non-empty mapping of node names to nodes")
    for name in nodes_raw:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidInput(f"nodes: '{name}' is not a valid node name")
    root = raw.get("root", next(iter(nodes_raw)))
    if root not in nodes_raw:
        raise InvalidInput(f"root: no node named '{root}'")
    layout = raw.get("layout", {})
    if not isinstance(layout, dict):
        raise InvalidInput("layout: must be a mapping of node names to positions")
    nodes = {name: _node(name, spec, nodes_raw) for name, spec in nodes_raw.items()}
    _check_graph(root, nodes)
    return Pipeline(root, nodes, raw)


def _check_graph(root: str, nodes: Mapping[str, Node]) -> None:
    """No cycle between nodes; every node reachable from the root."""
    edges = {n: [s.target for s in node.steps if s.kind == "node"] for n, node in nodes.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = " -> ".join([*path[path.index(n) :], n])
            raise InvalidInput(f"nodes.{n}: the nodes form a cycle: {cycle}")
        state[n] = 1
        for m in edges[n]:
            visit(m, [*path, n])
        state[n] = 2

    visit(root, [])
    unreachable = sorted(n for n in nodes if n not in state)
    if unreachable:
        raise InvalidInput(f"nodes.{unreachable[0]}: not reachable from the root '{root}'")


def wire(step: Step, available: Collection[str], wanted: Sequence[str] | None
         ) -> dict[str, str]:  # fmt: skip
    """Which tensor feeds each input of a step (step input -> tensor name): its `inputs`
    mapping; else the inputs `wanted` (the step model's input names, when known) found by name,
    else the only tensor when the model has one input; else every tensor by its own name. The
    one wiring rule: requests follow it, and saving a pipeline checks types along it. Errors
    name the field under the step (`inputs.<input>`, `inputs`)."""
    if step.inputs:
        for name, tensor in step.inputs:
            if tensor not in available:
                raise InvalidField(f"inputs.{name}", f"no tensor '{tensor}' here (have: "
                                   f"{', '.join(sorted(available)) or 'none'})")  # fmt: skip
        return dict(step.inputs)
    if wanted:
        if all(w in available for w in wanted):
            return {w: w for w in wanted}
        if len(wanted) == 1 and len(available) == 1:
            return {wanted[0]: next(iter(available))}
        missing = next(w for w in wanted if w not in available)
        have = ", ".join(sorted(available)) or "none"
        raise InvalidField("inputs", f"no tensor for input '{missing}' (have: {have}); map it "
                           "with 'inputs'")  # fmt: skip
    return {t: t for t in available}
