"""The memory budget: the pure eviction policy (`serving/budget.py`) with a fake clock, and the
engine under a budget over a real repository with thread replicas (no sockets, no processes)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.control.supervisor import ReplicaSupervisor
from inferd.core.errors import InvalidInput, ModelNotReady, Overloaded
from inferd.core.spec import parse_model_config, spec_to_config
from inferd.core.tensors import InferenceRequest, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.serving.budget import GpuNeed, Holder, plan_room
from inferd.serving.engine import InferenceEngine
from inferd.serving.gpus import Gpus, detect, nvml_usage
from inferd.serving.memory import MemoryBudget
from inferd.serving.repository import ModelRepository
from inferd.settings import Settings


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> float:
        self.now += s
        return self.now


class TickingClock(FakeClock):
    """Moves on by `tick` at every reading: each round of a loop that reads it sees time go by,
    with no test waiting on real time for it."""

    def __init__(self, tick: float) -> None:
        super().__init__()
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


# ---- the pure policy -----------------------------------------------------------------------


def test_fits_without_unloading_anything() -> None:
    clock = FakeClock()
    holders = [Holder("a", 100, clock()), Holder("b", 100, clock.advance(1))]
    room = plan_room(400, holders, 200)
    assert room.fits and room.evict == () and room.used == 200


def test_least_recently_used_idle_versions_go_first_and_only_as_many_as_needed() -> None:
    clock = FakeClock()
    a = Holder("a", 100, clock())
    b = Holder("b", 100, clock.advance(5))
    c = Holder("c", 100, clock.advance(5))
    # a was used again after c: b is now the least recently used
    a = Holder("a", 100, clock.advance(5))
    room = plan_room(300, [a, b, c], 100)
    assert room.fits and room.evict == ("b",)
    room = plan_room(300, [a, b, c], 200)
    assert room.fits and room.evict == ("b", "c")


def test_pinned_and_busy_versions_are_never_picked() -> None:
    clock = FakeClock()
    holders = [
        Holder("pinned", 100, clock(), pinned=True),
        Holder("busy", 100, clock.advance(1), busy=True),
        Holder("idle", 100, clock.advance(1)),
    ]
    room = plan_room(300, holders, 100)
    assert room.fits and room.evict == ("idle",)


def test_busy_versions_in_the_way_mean_wait_not_refuse() -> None:
    clock = FakeClock()
    holders = [Holder("p", 100, clock(), pinned=True), Holder("busy", 100, clock(), busy=True)]
    room = plan_room(250, holders, 100)
    assert not room.fits and room.wait and room.evict == ()
    assert "busy: busy" in room.refusal and "pinned: p" in room.refusal


def test_refused_when_pinned_versions_hold_the_room_or_it_exceeds_the_budget() -> None:
    clock = FakeClock()
    holders = [Holder("p", 200, clock(), pinned=True, label="p:1"), Holder("i", 50, clock())]
    room = plan_room(300, holders, 150)
    assert not room.fits and not room.wait and room.evict == ()  # nothing unloaded for nothing
    assert "pinned: p:1" in room.refusal
    room = plan_room(300, [], 400)
    assert not room.fits and not room.wait
    assert "more than the whole memory budget" in room.refusal


def test_ties_in_last_use_are_broken_by_key() -> None:
    holders = [Holder("b", 10, 1.0), Holder("a", 10, 1.0)]
    assert plan_room(20, holders, 10).evict == ("a",)


# ---- the pure policy, with GPUs ------------------------------------------------------------

TWO_GPUS = {0: 1000, 1: 1000}


def test_a_gpu_version_goes_where_it_fits_without_unloading() -> None:
    holders = [Holder("a", 10, 1.0, gpu={0: 700}), Holder("b", 10, 2.0, gpu={1: 200})]
    room = plan_room(None, holders, 10, GpuNeed(500, 1, TWO_GPUS))
    assert room.fits and room.evict == () and room.devices == (1,)
    # two GPUs asked: both, GPU 0 short by 200, so a (the only one there) goes
    room = plan_room(None, holders, 10, GpuNeed(500, 2, TWO_GPUS))
    assert room.fits and room.evict == ("a",) and room.devices == (0, 1)


def test_only_versions_on_the_short_gpu_are_unloaded() -> None:
    # cpu-only (oldest) and a model on GPU 1 are not in the way of a load short on GPU 0
    holders = [
        Holder("cpu", 100, 1.0),
        Holder("g1", 10, 2.0, gpu={1: 900}),
        Holder("g0-old", 10, 3.0, gpu={0: 400}),
        Holder("g0-new", 10, 4.0, gpu={0: 400}),
    ]
    room = plan_room(10_000, holders, 10, GpuNeed(500, 1, TWO_GPUS))
    assert room.fits and room.devices == (0,) and room.evict == ("g0-old",)


def test_host_and_gpu_both_short_unload_for_both() -> None:
    holders = [Holder("cpu", 300, 1.0), Holder("g0", 50, 2.0, gpu={0: 900})]
    room = plan_room(400, holders, 200, GpuNeed(500, 1, {0: 1000}))
    assert room.fits and room.evict == ("cpu", "g0")


def test_a_gpu_held_by_pinned_or_busy_versions_waits_or_is_refused() -> None:
    busy = [Holder("busy", 10, 1.0, busy=True, gpu={0: 800})]
    room = plan_room(None, busy, 10, GpuNeed(500, 1, {0: 1000}))
    assert not room.fits and room.wait and "busy: busy" in room.refusal
    assert "budget of GPU 0" in room.refusal
    pinned = [Holder("p", 10, 1.0, pinned=True, gpu={0: 800}, label="p:1")]
    room = plan_room(None, pinned, 10, GpuNeed(500, 1, {0: 1000}))
    assert not room.fits and not room.wait and "pinned: p:1" in room.refusal
    room = plan_room(None, [], 10, GpuNeed(2000, 1, {0: 1000}))
    assert not room.fits and not room.wait
    assert "more than the whole budget of GPU 0" in room.refusal
    room = plan_room(None, [], 10, GpuNeed(1, 3, TWO_GPUS))
    assert not room.fits and "needs 3 GPU(s)" in room.refusal


def test_over_a_gpu_after_a_load_unloads_idle_versions_there() -> None:
    # what `loaded` asks once a version came out larger than reserved: need 0 on every GPU
    holders = [Holder("old", 10, 1.0, gpu={1: 600}), Holder("new", 10, 2.0, busy=True,
                                                           gpu={1: 600})]  # fmt: skip
    room = plan_room(None, holders, 0, GpuNeed(0, 2, TWO_GPUS))
    assert room.fits and room.evict == ("old",)


# ---- configuration -------------------------------------------------------------------------


def test_pinned_field_parses_and_round_trips() -> None:
    spec = parse_model_config("m", {"pinned": True})
    assert spec.pinned and not parse_model_config("m", {}).pinned
    assert parse_model_config("m", spec_to_config(spec)) == spec
    with pytest.raises(InvalidInput, match="'pinned'"):
        parse_model_config("m", {"pinned": "yes"})


def test_budget_setting_takes_bytes_or_a_size() -> None:
    assert Settings().serving.memory_budget_bytes is None
    assert Settings(serving={"memory_budget_bytes": "2GiB"}).serving.memory_budget_bytes == 2**31
    assert Settings(serving={"memory_budget_bytes": 1000}).serving.memory_budget_bytes == 1000
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        Settings(serving={"memory_budget_bytes": "lots"})


def test_gpu_budget_setting_takes_a_size_or_a_fraction() -> None:
    def budget(v: object) -> object:
        return Settings(serving={"gpu_memory_budget": v}).serving.gpu_memory_budget

    assert Settings().serving.gpu_memory_budget is None
    assert budget("20GiB") == 20 * 2**30 and budget(1000) == 1000
    assert budget(0.9) == 0.9 and budget("90%") == 0.9 and budget("0.5") == 0.5
    for bad in ("lots", 1.5, "150%", "0%"):
        with pytest.raises(ValueError, match="gpu_memory_budget"):
            budget(bad)
    assert Settings(serving={"gpus": [0, 2]}).serving.gpus == [0, 2]
    with pytest.raises(ValueError, match="GPU indices"):
        Settings(serving={"gpus": [-1]})


def test_per_gpu_budgets_from_the_settings_and_what_the_driver_reports() -> None:
    found = {0: 80 * 2**30, 1: 40 * 2**30}
    assert Gpus.from_settings(0.5, None, found).budgets == {0: 40 * 2**30, 1: 20 * 2**30}
    assert Gpus.from_settings(2**30, [1], found).budgets == {1: 2**30}
    # no NVML here: a size still works on GPUs named by hand, a fraction cannot be worked out
    assert Gpus.from_settings(2**30, [0, 1], {}).budgets == {0: 2**30, 1: 2**30}
    with pytest.raises(InvalidInput, match="fraction"):
        Gpus.from_settings(0.9, [0], {})


def test_without_an_nvidia_driver_no_gpu_is_found_and_nothing_measured() -> None:
    # this machine has no GPU: NVML (nvidia-ml-py, installed) cannot initialise
    assert detect() == {} and nvml_usage([0]) == {}


def test_gpu_fields_of_resources_parse_and_round_trip() -> None:
    spec = parse_model_config("m", {"resources": {"gpu": 1, "gpu_memory": "4GiB"}})
    assert spec.resources.gpu == 1 and spec.resources.gpu_memory_bytes == 4 * 2**30
    assert parse_model_config("m", spec_to_config(spec)) == spec
    with pytest.raises(InvalidInput, match=r"'resources\.gpu_memory' needs 'resources\.gpu'"):
        parse_model_config("m", {"resources": {"gpu_memory": "4GiB"}})
    with pytest.raises(InvalidInput, match=r"resources\.gpu_memory"):
        parse_model_config("m", {"resources": {"gpu": 1, "gpu_memory": "much"}})


# ---- the engine under a budget (thread replicas; sizes are the model files') ----------------

YAML = textwrap.dedent(
    """
    runtime: python
    instance_kind: thread
    {extra}
    inputs: [{{name: X, datatype: FP32, shape: [-1]}}]
    outputs: [{{name: Y, datatype: FP32, shape: [-1]}}]
    """
)
CODE = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            return {'Y': inputs['X'] + %d}
    """
)
#: Each model's files: its code padded to this many bytes.
SIZE = 10_000


def write_model(root: Path, name: str, add: int, extra: str = "", size: int = SIZE) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "model.yaml").write_text(YAML.format(extra=extra))
    code = CODE % add
    (root / name / "1" / "model.py").write_text(code + "#" * (size - len(code) - 1) + "\n")


def request(x: float = 1.0) -> InferenceRequest:
    return InferenceRequest([Tensor("X", "FP32", np.array([x], np.float32))])


def loaded(engine: InferenceEngine) -> list[str]:
    return sorted(e["name"] for e in engine.index() if e["state"] == "READY")


def sample(metrics: ServingMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def started(
    root: Path, budget: int, supervised: bool = False, clock: FakeClock | None = None
) -> tuple[InferenceEngine, ServingMetrics, FakeClock]:
    clock = clock or FakeClock()
    metrics = ServingMetrics(CollectorRegistry())
    memory = MemoryBudget(budget, metrics.memory, wait_s=0.5, clock=clock)
    supervisor = ReplicaSupervisor(clock) if supervised else None
    engine = InferenceEngine(metrics, ModelRepository(root), drain_timeout_s=1,
                             supervisor=supervisor, budget=memory)  # fmt: skip
    await engine.start()
    return engine, metrics, clock


async def test_models_load_on_first_request_one_load_for_concurrent_ones(tmp_path: Path) -> None:
    for i in range(3):
        write_model(tmp_path, f"m{i}", i)
    engine, metrics, _ = await started(tmp_path, 3 * SIZE)
    try:
        assert loaded(engine) == [] and engine.not_ready_reason() is None
        assert "loads on its first request" in engine.index()[0]["reason"]
        outs = await asyncio.gather(*(engine.infer("m1", None, request(i)) for i in range(8)))
        assert [o.outputs[0].data.tolist() for o in outs] == [[i + 1.0] for i in range(8)]
        assert sample(metrics, "inferd_model_loads_total", model="m1", outcome="success") == 1
        assert loaded(engine) == ["m1"]
        assert sample(metrics, "inferd_models_loaded") == 1
        assert sample(metrics, "inferd_memory_used_bytes") == SIZE
        assert sample(metrics, "inferd_memory_budget_bytes") == 3 * SIZE
    finally:
        await engine.stop()


async def test_least_recently_used_idle_model_is_unloaded_and_comes_back(tmp_path: Path) -> None:
    for i in range(4):
        write_model(tmp_path, f"m{i}", i)
    engine, metrics, clock = await started(tmp_path, 3 * SIZE)
    try:
        for name in ("m0", "m1", "m2"):
            clock.advance(1)
            await engine.infer(name, None, request())
        clock.advance(1)
        await engine.infer("m0", None, request())  # m1 is now the least recently used
        clock.advance(1)
        out = await engine.infer("m3", None, request())
        assert out.outputs[0].data.tolist() == [4.0]
        assert loaded(engine) == ["m0", "m2", "m3"]
        assert sample(metrics, "inferd_model_evictions_total", model="m1") == 1
        m1 = next(e for e in engine.index() if e["name"] == "m1")
        assert m1["state"] == "UNAVAILABLE" and "unloaded to make room" in m1["reason"]
        # the evicted model answers again, after the next least recently used one made room
        clock.advance(1)
        assert (await engine.infer("m1", None, request())).outputs[0].data.tolist() == [2.0]
        assert loaded(engine) == ["m0", "m1", "m3"]
        assert sample(metrics, "inferd_model_loads_total", model="m1", outcome="success") == 2
        assert sample(metrics, "inferd_models_loaded") == 3
    finally:
        await engine.stop()


async def test_pinned_model_loads_at_start_and_is_never_unloaded(tmp_path: Path) -> None:
    write_model(tmp_path, "keep", 0, extra="pinned: true")
    for i in range(1, 4):
        write_model(tmp_path, f"m{i}", i)
    engine, metrics, clock = await started(tmp_path, 2 * SIZE)
    try:
        assert loaded(engine) == ["keep"]
        for name in ("m1", "m2", "m3", "m1"):
            clock.advance(1)
            await engine.infer(name, None, request())
            assert "keep" in loaded(engine) and len(loaded(engine)) == 2
        assert sample(metrics, "inferd_model_evictions_total", model="keep") == 0
        assert sample(metrics, "inferd_model_evictions_total", model="m1") == 1
    finally:
        await engine.stop()


async def test_a_model_that_cannot_fit_is_refused_with_the_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "keep", 0, extra="pinned: true")
    write_model(tmp_path, "big", 1, size=3 * SIZE)
    write_model(tmp_path, "mid", 2, size=2 * SIZE)
    engine, metrics, _ = await started(tmp_path, 2 * SIZE + 100)
    try:
        with pytest.raises(Overloaded, match="more than the whole memory budget"):
            await engine.infer("big", None, request())
        with pytest.raises(Overloaded, match="pinned: keep:1"):
            await engine.infer("mid", None, request())
        assert sample(metrics, "inferd_model_budget_refusals_total", model="big") == 1
        assert loaded(engine) == ["keep"]  # nothing was unloaded for nothing
    finally:
        await engine.stop()


async def test_a_load_error_fails_the_request_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "model.yaml").write_text(YAML.format(extra=""))
    (tmp_path / "bad" / "1" / "model.py").write_text("raise ImportError('cannot import this')\n")
    engine, metrics, _ = await started(tmp_path, 3 * SIZE)
    try:
        with pytest.raises(ModelNotReady, match="cannot import this"):
            await engine.infer("bad", None, request())
        entry = engine.index()[0]
        assert entry["state"] == "UNAVAILABLE" and "cannot import this" in entry["reason"]
        assert sample(metrics, "inferd_model_loads_total", model="bad", outcome="failure") == 1
        assert sample(metrics, "inferd_memory_used_bytes") == 0
    finally:
        await engine.stop()


async def test_a_load_waits_for_a_busy_model_instead_of_failing(tmp_path: Path) -> None:
    write_model(tmp_path, "a", 0)
    write_model(tmp_path, "b", 1)
    engine, _, clock = await started(tmp_path, SIZE + 100)
    try:
        await engine.infer("a", None, request())
        sv = engine.version("a")
        sv.enter()  # a request of `a` still running
        waiting = asyncio.ensure_future(engine.infer("b", None, request()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done() and loaded(engine) == ["a"]
        clock.advance(1)
        sv.leave()  # done: `a` is idle and may go
        assert (await waiting).outputs[0].data.tolist() == [2.0]
        assert loaded(engine) == ["b"]
    finally:
        await engine.stop()


async def test_without_a_budget_every_model_loads_at_start(tmp_path: Path) -> None:
    for i in range(2):
        write_model(tmp_path, f"m{i}", i, extra="pinned: false")
    engine = InferenceEngine(ServingMetrics(CollectorRegistry()), ModelRepository(tmp_path),
                             drain_timeout_s=1)  # fmt: skip
    await engine.start()
    try:
        assert loaded(engine) == ["m0", "m1"]
    finally:
        await engine.stop()


async def test_scale_to_zero_composes_with_the_budget(tmp_path: Path) -> None:
    scaling = "autoscaling: {min_replicas: 0, max_replicas: 1, scale_to_zero_after_s: 0.5, " \
        "downscale_delay_s: 0.1}"  # fmt: skip
    write_model(tmp_path, "z", 0, extra=scaling)
    write_model(tmp_path, "a", 1)
    write_model(tmp_path, "b", 2)
    # each autoscaling round (every 0.05 s) sees 0.1 s go by
    engine, metrics, _ = await started(tmp_path, 2 * SIZE, True, TickingClock(0.1))
    try:
        await engine.infer("z", None, request())
        sched = engine.version("z").scheduler
        sched.autoscale_interval_s = 0.05
        counts: asyncio.Queue[int] = asyncio.Queue()
        scale_to = sched.scale_to

        async def recorded(n: int) -> None:
            await scale_to(n)
            counts.put_nowait(len(sched.live()))

        setattr(sched, "scale_to", recorded)  # noqa: B010  (the autoscaler calls it by name)
        # idle past scale_to_zero_after_s: its autoscaler takes the replica
        assert await asyncio.wait_for(counts.get(), 30) == 0
        # still loaded as far as the budget goes: it keeps its place (a request may start a
        # replica at any time without asking the budget)
        assert loaded(engine) == ["z"] and sample(metrics, "inferd_memory_used_bytes") == SIZE
        # a request at zero replicas: the autoscaler's cold start, no load through the budget
        assert (await engine.infer("z", None, request())).outputs[0].data.tolist() == [1.0]
        assert sample(metrics, "inferd_model_loads_total", model="z", outcome="success") == 1
        # room for two: a and b push the least recently used (z) out, its loops stop
        for name in ("a", "b"):
            await engine.infer(name, None, request())
        assert loaded(engine) == ["a", "b"] and sched.stopping
        assert sample(metrics, "inferd_model_evictions_total", model="z") == 1
        assert (await engine.infer("z", None, request())).outputs[0].data.tolist() == [1.0]
        assert sample(metrics, "inferd_model_loads_total", model="z", outcome="success") == 2
        assert len(engine.version("z").scheduler.live()) == 1
    finally:
        await engine.stop()


async def test_an_explicit_load_goes_through_the_budget(tmp_path: Path) -> None:
    for i in range(3):
        write_model(tmp_path, f"m{i}", i)
    engine, metrics, clock = await started(tmp_path, 2 * SIZE)
    try:
        for name in ("m0", "m1"):
            clock.advance(1)
            await engine.infer(name, None, request())
        clock.advance(1)
        await engine.load("m2")  # loads now, making room as a request would
        assert loaded(engine) == ["m1", "m2"]
        assert sample(metrics, "inferd_model_evictions_total", model="m0") == 1
        assert sample(metrics, "inferd_model_loads_total", model="m2", outcome="success") == 1
        await engine.unload("m1")  # an explicit unload hands its memory back
        assert sample(metrics, "inferd_memory_used_bytes") == SIZE
        assert (await engine.infer("m0", None, request())).outputs[0].data.tolist() == [1.0]
        assert loaded(engine) == ["m0", "m2"]
    finally:
        await engine.stop()
