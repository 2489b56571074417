"""inferd's continuous-batching admission policy, with plain data (no torch, no model)."""

from __future__ import annotations

from pathlib import Path

from inferd.llm import scheduler
from inferd.llm.scheduler import Admission, Candidate, Limits, admit

LIMITS = Limits(max_num_seqs=4, max_prefill_tokens=100, kv_cache_tokens=10_000)


def cand(
    rid: str, prompt: int = 10, *, arrival: float = 0.0, max_tokens: int = 10, aborted: bool = False
) -> Candidate:
    return Candidate(rid, prompt, max_tokens, arrival, aborted)


def run(
    waiting: list[Candidate], *, running: int = 0, reserved: int = 0, limits: Limits = LIMITS
) -> Admission:
    return admit(waiting, running=running, reserved_tokens=reserved, limits=limits)


def test_first_come_first_served_by_arrival_not_list_order() -> None:
    waiting = [cand("late", arrival=3.0), cand("early", arrival=1.0), cand("mid", arrival=2.0)]
    assert run(waiting).admit == ("early", "mid", "late")


def test_same_arrival_keeps_queue_order() -> None:
    waiting = [cand(f"r{i}", arrival=5.0) for i in range(4)]
    assert run(waiting).admit == ("r0", "r1", "r2", "r3")


def test_max_num_seqs_counts_the_running_batch() -> None:
    waiting = [cand(f"r{i}", arrival=i) for i in range(6)]
    assert run(waiting).admit == ("r0", "r1", "r2", "r3")
    assert run(waiting, running=3).admit == ("r0",)
    assert run(waiting, running=4).admit == ()


def test_prefill_budget_stops_at_the_first_that_does_not_fit() -> None:
    # 40 + 40 fit in 100; the 30 does not, and the 5 behind it must not jump the queue.
    waiting = [
        cand("a", 40, arrival=0),
        cand("b", 40, arrival=1),
        cand("c", 30, arrival=2),
        cand("d", 5, arrival=3),
    ]
    assert run(waiting).admit == ("a", "b")


def test_an_oversized_prompt_runs_alone_rather_than_starving() -> None:
    waiting = [cand("big", 500, arrival=0), cand("small", 5, arrival=1)]
    assert run(waiting).admit == ("big",)
    # Behind another admission it waits for a step of its own.
    waiting = [cand("small", 5, arrival=0), cand("big", 500, arrival=1), cand("tiny", 1, arrival=2)]
    assert run(waiting).admit == ("small",)


def test_kv_capacity_reserves_prompt_plus_max_tokens() -> None:
    limits = Limits(max_num_seqs=8, max_prefill_tokens=1000, kv_cache_tokens=100)
    waiting = [cand("a", 20, max_tokens=30, arrival=0), cand("b", 20, max_tokens=30, arrival=1)]
    assert run(waiting, limits=limits).admit == ("a", "b")
    assert run(waiting, reserved=50, limits=limits).admit == ("a",)
    assert run(waiting, reserved=51, limits=limits).admit == ()


def test_aborted_requests_are_dropped_even_behind_a_blocked_queue() -> None:
    waiting = [
        cand("gone", arrival=0, aborted=True),
        cand("a", arrival=1),
        cand("b", arrival=2),
        cand("also-gone", arrival=3, aborted=True),
    ]
    decision = run(waiting, running=3)
    assert decision.admit == ("a",)
    assert decision.drop == ("gone", "also-gone")


def test_aborted_requests_take_no_slot_and_no_budget() -> None:
    limits = Limits(max_num_seqs=1, max_prefill_tokens=10, kv_cache_tokens=1000)
    waiting = [cand("gone", 10, arrival=0, aborted=True), cand("a", 10, arrival=1)]
    assert run(waiting, limits=limits) == Admission(admit=("a",), drop=("gone",))


def test_nothing_waiting_admits_nothing() -> None:
    assert run([]) == Admission()


def test_policy_module_does_not_need_torch() -> None:
    # The policy stays importable by the serving layer (and testable) without torch.
    source = Path(scheduler.__file__).read_text(encoding="utf-8")
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports, "expected import lines"
    assert not [line for line in imports if "torch" in line or "transformers" in line]
