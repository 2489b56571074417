"""Running a Triton ensemble (`core/ensemble.py`): its steps, where a model's scheduler runs
its replicas.

An ensemble version is a `ServedVersion` like any other (metadata, readiness, statistics,
metrics, every protocol), whose scheduler is an `EnsembleScheduler`: it has no replicas, and
`submit` runs the steps. Each step is a request to its model through `StepRunner` (the data
plane's routing, so a step's model may be a deployment with a traffic split, a fallback, a
canary), carrying the ensemble request's id, parameters and what is left of its deadline; the
tensors pass between steps in memory as numpy arrays (no encoding). A step's model batches and
queues as it always does. Steps of one wave run concurrently.

A failing step fails the request with its model's error class (so its status code) and a
message that names the step: `ensemble 'e' step 1 (model 'm'): ...`.
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


class EnsembleScheduler(Scheduler):
    """The scheduler of an ensemble version: no queue, no replicas; `submit` runs the steps."""

    def __init__(self, spec: ModelSpec, label: str, stats: VersionStats,
                 metrics: VersionMetrics, steps: Callable[[], StepRunner]) -> None:  # fmt: skip
        super().__init__(spec, label, [], _no_replica, stats, metrics)
        assert spec.ensemble is not None
        self.ensemble: Ensemble = spec.ensemble
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
    ) -> ReplicaResult:
        if self.stopping:
            raise ModelNotReady(f"model '{self.spec.name}' is unloading")
        self._active += 1
        self._submitted += 1
        t0 = time.perf_counter_ns()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        run = self._steps()
        tensors: dict[str, np.ndarray] = dict(inputs)
        try:
            for wave in self.ensemble.waves:
                if len(wave) == 1:
                    tensors.update(await self._step(run, wave[0], tensors, parameters, deadline))
                    continue
                done = await asyncio.gather(
                    *(self._step(run, i, tensors, parameters, deadline) for i in wave)
                )
                for produced in done:
                    tensors.update(produced)
        finally:
            self._active -= 1
        wanted = outputs or [t.name for t in self.spec.outputs]
        return ReplicaResult({n: tensors[n] for n in wanted if n in tensors}, 0,
                             time.perf_counter_ns() - t0)  # fmt: skip

    async def _step(
        self,
        run: StepRunner,
        i: int,
        tensors: dict[str, np.ndarray],
        parameters: dict[str, Any] | None,
        deadline: float | None,
    ) -> dict[str, np.ndarray]:
        step: EnsembleStep = self.ensemble.steps[i]
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"ensemble '{self.spec.name}' ran out of time before step {i} "
                    f"(model '{step.model}')"
                )
        request = InferenceRequest(
            inputs=[Tensor(name, datatype_of(tensors[t]), tensors[t]) for name, t in step.inputs],
            parameters=dict(parameters) if parameters else None,
            outputs=[RequestedOutput(name) for name, _ in step.outputs],
            timeout_s=timeout,
        )
        try:
            response = await run(step.model, step.version, request)
        except InferdError as e:
            e.message = f"ensemble '{self.spec.name}' step {i} (model '{step.model}'): {e.message}"
            e.args = (e.message,)
            raise
        produced = {t.name: t.data for t in response.outputs}
        out = {}
        for name, tensor in step.outputs:
            if name not in produced:
                raise ModelExecutionError(
                    f"ensemble '{self.spec.name}' step {i} (model '{step.model}') did not "
                    f"return output '{name}'"
                )
            out[tensor] = produced[name]
        return out
