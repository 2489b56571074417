"""Models made of other models, run where a model's scheduler would run its replicas: Triton
ensembles (`core/ensemble.py`) and inference graphs (`core/pipeline.py`).

Such a version is a `ServedVersion` like any other (metadata, readiness, statistics, metrics,
every protocol), whose scheduler is a `CompositeScheduler`: it has no replicas and no queue, and
`submit` runs the steps. Each model step is a request to its model through a `StepRunner` (the
data plane's routing, so a step's model may be a deployment with a traffic split, a fallback, a
canary), carrying the composite request's id, parameters and what is left of its deadline; the
tensors pass between steps in memory as numpy arrays (never encoded). A step's model batches and
queues as it always does.

A failing step fails the request with its model's error class (so its status code) and a
message that names the step: `ensemble 'e' step 1 (model 'm'): ...`,
`pipeline 'p' step 'main[0]' (model 'm'): ...`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from inferd.core.datatypes import datatype_of
from inferd.core.ensemble import Ensemble, EnsembleStep
from inferd.core.errors import DeadlineExceeded, InferdError, ModelExecutionError, ModelNotReady
from inferd.core.spec import ModelSpec
from inferd.core.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from inferd.observability.metrics import VersionMetrics
from inferd.serving.replicas import Slot
from inferd.serving.scheduler import ReplicaHealth, Scheduler
from inferd.serving.stats import VersionStats
from inferd.workers import Replica, ReplicaResult

#: Runs one request on model `name` (version None: as routed), as a client request would.
StepRunner = Callable[[str, str | None, InferenceRequest], Awaitable[InferenceResponse]]


def _no_replica(i: int) -> Replica:
    raise ModelNotReady("an ensemble has no replicas of its own")


class CompositeScheduler(Scheduler):
    """The scheduler of a version made of other models: no queue, no replicas."""

    #: "ensemble" | "pipeline": how errors name it.
    what = ""

    def __init__(self, spec: ModelSpec, label: str, stats: VersionStats,
                 metrics: VersionMetrics, steps: Callable[[], StepRunner]) -> None:  # fmt: skip
        super().__init__(spec, label, [], _no_replica, stats, metrics)
        self._steps = steps
        self._active = 0
        self._submitted = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def submitted(self) -> int:
        return self._submitted

    def live(self) -> list[Slot]:
        return []

    def health(self) -> ReplicaHealth:
        return ReplicaHealth(0, 0, 0, 0, "")

    def start(self) -> None:
        """Nothing to start: the steps' models run on their own replicas."""

    async def stop(self) -> None:
        self.queue.stopping = self.replicas.stopping = True
        self.stopped.set()

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None,
        parameters: dict[str, Any] | None,
        rows: int,
        timeout_s: float | None,
        on_queued: Callable[[], None] | None = None,
        request_id: str | None = None,
    ) -> ReplicaResult:
        if self.stopping:
            raise ModelNotReady(f"model '{self.spec.name}' is unloading")
        self._active += 1
        self._submitted += 1
        t0 = time.perf_counter_ns()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            tensors = await self.run(self._steps(), dict(inputs), parameters, deadline,
                                     request_id)  # fmt: skip
        finally:
            self._active -= 1
        wanted = outputs or [t.name for t in self.spec.outputs]
        return ReplicaResult({n: tensors[n] for n in wanted if n in tensors}, 0,
                             time.perf_counter_ns() - t0)  # fmt: skip

    async def run(self, call: StepRunner, tensors: dict[str, np.ndarray],
                  parameters: dict[str, Any] | None, deadline: float | None,
                  request_id: str | None) -> dict[str, np.ndarray]:  # fmt: skip
        raise NotImplementedError

    async def call_model(
        self,
        call: StepRunner,
        where: str,
        model: str,
        version: str | None,
        inputs: dict[str, np.ndarray],
        wanted: list[str] | None,
        parameters: dict[str, Any] | None,
        deadline: float | None,
        request_id: str | None,
    ) -> dict[str, np.ndarray]:
        """One model step: its request, its answer as arrays by output name. Errors keep their
        class, their message prefixed with `where` (which names the step and its model)."""
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"{self.what} '{self.spec.name}' ran out of time before {where}"
                )
        request = InferenceRequest(
            inputs=[Tensor(name, datatype_of(arr), arr) for name, arr in inputs.items()],
            id=request_id,
            parameters=dict(parameters) if parameters else None,
            outputs=[RequestedOutput(name) for name in wanted] if wanted else None,
            timeout_s=timeout,
        )
        try:
            response = await call(model, version, request)
        except InferdError as e:
            e.message = f"{self.what} '{self.spec.name}' {where}: {e.message}"
            e.args = (e.message,)
            raise
        return {t.name: t.data for t in response.outputs}


class EnsembleScheduler(CompositeScheduler):
    """A Triton ensemble: its steps, wave by wave (the steps of a wave concurrently)."""

    what = "ensemble"

    def __init__(self, spec: ModelSpec, label: str, stats: VersionStats,
                 metrics: VersionMetrics, steps: Callable[[], StepRunner]) -> None:  # fmt: skip
        super().__init__(spec, label, stats, metrics, steps)
        assert spec.ensemble is not None
        self.ensemble: Ensemble = spec.ensemble

    async def run(self, call: StepRunner, tensors: dict[str, np.ndarray],
                  parameters: dict[str, Any] | None, deadline: float | None,
                  request_id: str | None) -> dict[str, np.ndarray]:  # fmt: skip
        for wave in self.ensemble.waves:
            if len(wave) == 1:
                tensors.update(await self._step(call, wave[0], tensors, parameters, deadline,
                                                request_id))  # fmt: skip
                continue
            done = await asyncio.gather(
                *(self._step(call, i, tensors, parameters, deadline, request_id) for i in wave)
            )
            for produced in done:
                tensors.update(produced)
        return tensors

    async def _step(self, call: StepRunner, i: int, tensors: dict[str, np.ndarray],
                    parameters: dict[str, Any] | None, deadline: float | None,
                    request_id: str | None) -> dict[str, np.ndarray]:  # fmt: skip
        step: EnsembleStep = self.ensemble.steps[i]
        where = f"step {i} (model '{step.model}')"
        produced = await self.call_model(
            call, where, step.model, step.version,
            {name: tensors[t] for name, t in step.inputs},
            [name for name, _ in step.outputs], parameters, deadline, request_id,
        )  # fmt: skip
        out = {}
        for name, tensor in step.outputs:
            if name not in produced:
                raise ModelExecutionError(
                    f"ensemble '{self.spec.name}' {where} did not return output '{name}'"
                )
            out[tensor] = produced[name]
        return out
