"""Running an inference graph (`core/pipeline.py`) as a model: `PipelineScheduler`.

The root node runs on the request's tensors. A model step calls its model through the
`StepRunner` (`composite.py`); a node step runs that node on what the step reads; a processor
step runs a built-in processor (`core/processors.py`) in the server, on numpy arrays. Each
step is timed and counted by name (`inferd_pipeline_step_seconds{model, step}`,
`inferd_pipeline_step_failures_total`, `inferd_pipeline_fallbacks_total`); a step with a
`fallback` answers with its fallback model or value when it fails, and the fallback is counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from inferd.core.errors import InferdError, InvalidInput, ModelExecutionError
from inferd.core.pipeline import Node, Pipeline, Step, wire
from inferd.core.processors import Processor, build
from inferd.core.spec import ModelSpec
from inferd.observability.metrics import PipelineMetrics, VersionMetrics
from inferd.serving.composite import CompositeScheduler, StepRunner
from inferd.serving.stats import VersionStats

Arrays = dict[str, np.ndarray]
#: The input names of model `name` (version None: its default), to wire a step by name.
Signature = Callable[[str, str | None], Sequence[str] | None]


class PipelineScheduler(CompositeScheduler):
    """An inference graph served as one model."""

    what = "pipeline"

    def __init__(self, spec: ModelSpec, label: str, stats: VersionStats,
                 metrics: VersionMetrics, steps: Callable[[], StepRunner],
                 signature: Signature, pipeline_metrics: PipelineMetrics,
                 draw: Callable[[], float] = random.random) -> None:  # fmt: skip
        super().__init__(spec, label, stats, metrics, steps)
        assert spec.pipeline is not None
        self.pipeline: Pipeline = spec.pipeline
        self._signature = signature
        self._draw = draw
        #: Each processor step's function, by the step's identity.
        self._processors: dict[int, Processor] = {
            id(step): build(step.target, step.config, where)
            for where, step in self.pipeline.processors()
        }
        #: Each step's metric children, bound once (a label lookup per step per request costs
        #: more than the observation).
        name = spec.name
        self._seconds: dict[int, Any] = {}
        self._failures: dict[int, Any] = {}
        self._fallbacks: dict[int, Any] = {}
        for node in self.pipeline.nodes.values():
            for step in node.steps:
                self._seconds[id(step)] = pipeline_metrics.seconds.labels(name, step.label)
                self._failures[id(step)] = pipeline_metrics.failures.labels(name, step.label)
                self._fallbacks[id(step)] = pipeline_metrics.fallbacks.labels(name, step.label)

    async def run(self, call: StepRunner, tensors: Arrays, parameters: dict[str, Any] | None,
                  deadline: float | None, request_id: str | None) -> Arrays:  # fmt: skip
        run = _Run(self, call, tensors, parameters, deadline, request_id)
        return await run.node(self.pipeline.nodes[self.pipeline.root], tensors)


class _Run:
    """One request through the graph."""

    def __init__(self, owner: PipelineScheduler, call: StepRunner, request: Arrays,
                 parameters: dict[str, Any] | None, deadline: float | None,
                 request_id: str | None) -> None:  # fmt: skip
        self.owner = owner
        self.call = call
        self.request = request
        self.parameters = parameters
        self.deadline = deadline
        self.request_id = request_id

    async def node(self, node: Node, current: Arrays) -> Arrays:
        if node.kind == "sequence":
            for step in node.steps:
                current = await self.step(step, self.request if step.from_request else current)
            return current
        if node.kind == "switch":
            for step in node.steps:
                if step.when is None or step.when.holds(self.parameters, current):
                    return await self.step(step, current)
            raise InvalidInput(f"pipeline '{self.owner.spec.name}' node '{node.name}': no "
                               "step's condition holds for this request")  # fmt: skip
        if node.kind == "splitter":
            return await self.step(_pick(node.steps, self.owner._draw()), current)
        results = await asyncio.gather(*(self.step(s, current) for s in node.steps))
        return self._aggregate(node, results)

    async def step(self, step: Step, current: Arrays) -> Arrays:
        owner = self.owner
        t0 = time.perf_counter()
        try:
            out = await self._execute(step, current)
        except InferdError:
            owner._failures[id(step)].inc()
            if step.fallback_value is None and step.fallback is None:
                raise
            owner._fallbacks[id(step)].inc()
            if step.fallback_value is not None:
                out = {k: np.asarray(v) for k, v in step.fallback_value.items()}
            else:
                assert step.fallback is not None
                out = await self._execute(step.fallback, current)
        owner._seconds[id(step)].observe(time.perf_counter() - t0)
        if step.outputs:
            renames = dict(step.outputs)
            out = {renames.get(k, k): v for k, v in out.items()}
        return out

    async def _execute(self, step: Step, current: Arrays) -> Arrays:
        owner = self.owner
        if step.kind == "node":
            return await self.node(owner.pipeline.nodes[step.target], current)
        if step.kind == "processor":
            try:
                return owner._processors[id(step)](current)
            except InferdError as e:
                e.message = (f"pipeline '{owner.spec.name}' step '{step.label}' (processor "
                             f"'{step.target}'): {e.message}")  # fmt: skip
                e.args = (e.message,)
                raise
        where = f"step '{step.label}' (model '{step.target}')"
        try:
            wanted = owner._signature(step.target, step.version)
            inputs = {name: current[t] for name, t in wire(step, current, wanted).items()}
        except InferdError as e:
            e.message = f"pipeline '{owner.spec.name}' {where}: {e.message}"
            e.args = (e.message,)
            raise
        return await owner.call_model(self.call, where, step.target, step.version, inputs, None,
                                      self.parameters, self.deadline,
                                      self.request_id)  # fmt: skip

    def _aggregate(self, node: Node, results: list[Arrays]) -> Arrays:
        if node.aggregate is None:
            return {f"{s.label}.{k}": v for s, r in zip(node.steps, results, strict=True)
                    for k, v in r.items()}  # fmt: skip
        names = list(results[0])
        for s, r in zip(node.steps, results, strict=True):
            if set(r) != set(names):
                raise ModelExecutionError(
                    f"pipeline '{self.owner.spec.name}' node '{node.name}': step '{s.label}' "
                    f"returned {sorted(r)}, the first step {sorted(names)}; {node.aggregate} "
                    "needs the same outputs from every step"
                )
        out = {}
        for name in names:
            arrays = [r[name] for r in results]
            try:
                out[name] = _combine(node, arrays)
            except ValueError as e:
                raise ModelExecutionError(
                    f"pipeline '{self.owner.spec.name}' node '{node.name}': cannot "
                    f"{node.aggregate} output '{name}': {e}"
                ) from None
        return out


def _pick(steps: Sequence[Step], u: float) -> Step:
    total = sum(s.weight for s in steps)
    at = u * total
    for s in steps:
        if at < s.weight:
            return s
        at -= s.weight
    return next(s for s in reversed(steps) if s.weight > 0)


def _combine(node: Node, arrays: list[np.ndarray]) -> np.ndarray:
    if node.aggregate == "concat":
        return np.concatenate(arrays, axis=node.axis)
    stacked = np.stack(arrays)
    if node.aggregate == "mean":
        return stacked.mean(axis=0).astype(arrays[0].dtype, copy=False)
    if node.aggregate == "weighted_mean":
        w = np.asarray(node.weights, dtype=np.float64).reshape((-1,) + (1,) * arrays[0].ndim)
        return ((stacked * w).sum(axis=0) / w.sum()).astype(arrays[0].dtype, copy=False)
    return _majority(stacked)


def _majority(stacked: np.ndarray) -> np.ndarray:
    """Per element, the value most steps gave (ties: the smallest)."""
    k = stacked.shape[0]
    flat = stacked.reshape(k, -1)
    out = np.empty(flat.shape[1], dtype=stacked.dtype)
    for j in range(flat.shape[1]):
        values, counts = np.unique(flat[:, j], return_counts=True)
        out[j] = values[int(np.argmax(counts))]
    return out.reshape(stacked.shape[1:])
