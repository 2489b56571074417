"""Which replica serves a version: a table keyed by runtime kind, then by instance kind.

`runtime: llm` versions run continuous-batching generators (`ProcessGenerator` in a worker
process, `ThreadGenerator` on a thread in the server); every other runtime runs a model replica
(`ProcessReplica` in a worker process, `InProcessReplica` on a thread). A new kind of replica is
one more row, not one more branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from inferd.core.spec import ModelSpec
from inferd.observability.metrics import ServingMetrics
from inferd.runtimes import runtime_class
from inferd.runtimes.base import Runtime
from inferd.serving.replicas import ReplicaMaker
from inferd.workers import InProcessReplica, ProcessReplica, Replica
from inferd.workers.generation import ThreadGenerator, engine_factory
from inferd.workers.generation_process import ProcessGenerator
from inferd.workers.isolation import WorkerIsolation


@dataclass(frozen=True)
class ReplicaPlan:
    """What the replicas of one version are built from."""

    spec: ModelSpec
    version: str
    path: Path
    runtime_name: str
    isolation: WorkerIsolation
    metrics: ServingMetrics

    def label(self, i: int) -> str:
        return f"{self.spec.name}-{self.version}-{i}"


Progress = Callable[[int, int], None]


def _progress(v: ReplicaPlan) -> Progress:
    llm = v.metrics.llm
    steps = llm.image_steps.labels(v.spec.name, v.version)
    ratio = llm.progress.labels(v.spec.name, v.version)

    def progress(done: int, total: int) -> None:
        # one report per denoising step: the counter moves live, the ratio shows how far
        steps.inc()
        ratio.set(done / total if total else 0.0)

    return progress


def _process_replicas(v: ReplicaPlan) -> ReplicaMaker:
    progress = _progress(v)

    def make(i: int) -> Replica:
        replica = ProcessReplica(v.spec, v.version, v.path, v.runtime_name, v.label(i), index=i,
                                 isolation=v.isolation)  # fmt: skip
        replica.on_progress = progress
        return replica

    return make


def _thread_replicas(v: ReplicaPlan) -> ReplicaMaker:
    cls = runtime_class(v.runtime_name)
    progress = _progress(v)

    def make(i: int) -> Replica:
        replica = InProcessReplica(cls(v.spec, v.version, v.path), v.label(i),
                                   v.spec.execution_timeout_s)  # fmt: skip
        replica.on_progress = progress
        return replica

    return make


def _process_generators(v: ReplicaPlan) -> ReplicaMaker:
    def make(i: int) -> Replica:
        return ProcessGenerator(v.spec, v.version, v.path, v.label(i), index=i,
                                isolation=v.isolation)  # fmt: skip

    return make


def _thread_generators(v: ReplicaPlan) -> ReplicaMaker:
    make_engine = engine_factory(v.spec, v.path)

    def make(i: int) -> Replica:
        return ThreadGenerator(make_engine, v.label(i))

    return make


Builder = Callable[[ReplicaPlan], ReplicaMaker]

#: Model replicas, by instance kind: any runtime that has no row of its own in `BY_RUNTIME`.
MODEL_REPLICAS: Mapping[str, Builder] = {"process": _process_replicas, "thread": _thread_replicas}

#: Runtime kind → its replicas by instance kind.
BY_RUNTIME: Mapping[str, Mapping[str, Builder]] = {
    "llm": {"process": _process_generators, "thread": _thread_generators},
}


def replica_maker(v: ReplicaPlan) -> ReplicaMaker:
    """How to build replica `i` of the version (`spec.instance_kind`, default process)."""
    kinds = BY_RUNTIME.get(v.runtime_name, MODEL_REPLICAS)
    build = kinds.get(v.spec.instance_kind, kinds["process"])
    return build(v)


def placed_replica_maker(v: ReplicaPlan) -> Callable[[tuple[int, ...]], ReplicaMaker] | None:
    """How to build the version's replicas on given GPUs (the per-GPU budget's placement), or
    None where they cannot be placed: replicas on threads share the server's GPUs."""
    if v.spec.instance_kind == "thread":
        return None

    def on(devices: tuple[int, ...]) -> ReplicaMaker:
        placed = replace(v.spec.resources, devices=devices)
        return replica_maker(replace(v, spec=replace(v.spec, resources=placed)))

    return on


def runtime_replicas(runtime: Runtime, label: str, execution_timeout_s: float) -> ReplicaMaker:
    """Replicas of an already-constructed runtime (the Python API's objects): threads."""

    def make(i: int) -> Replica:
        return InProcessReplica(runtime, f"{label}-{i}", execution_timeout_s)

    return make
