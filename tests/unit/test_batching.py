"""The batching policy is a pure function of the queue and the time: tested with fake times."""

from __future__ import annotations

from inferd.core.spec import BatchingPolicy
from inferd.serving.batching import Pending, plan_batch, restart_delay

MS = 1_000_000


def q(*rows: int, key: str = "a", t0: int = 0) -> list[Pending]:
    return [Pending(r, key, t0 + i) for i, r in enumerate(rows)]


def test_no_batching_takes_the_head_alone() -> None:
    assert plan_batch(q(1, 1, 1), 0, None, 8) == ([0], 0.0)


def test_waits_for_the_delay_then_runs_what_it_has() -> None:
    policy = BatchingPolicy(max_queue_delay_us=2000)
    picks, wait = plan_batch(q(1, 1), 0, policy, 8)
    assert picks == [] and abs(wait - 0.002) < 1e-6
    assert plan_batch(q(1, 1), 3 * MS, policy, 8) == ([0, 1], 0.0)


def test_full_batch_runs_at_once() -> None:
    policy = BatchingPolicy(max_queue_delay_us=10_000_000)
    assert plan_batch(q(4, 2, 2, 1), 0, policy, 8) == ([0, 1, 2], 0.0)


def test_preferred_size_runs_at_once() -> None:
    policy = BatchingPolicy(max_queue_delay_us=10_000_000, preferred_batch_sizes=(4,))
    assert plan_batch(q(2, 2), 0, policy, 8) == ([0, 1], 0.0)
    picks, wait = plan_batch(q(2, 1), 0, policy, 8)
    assert picks == [] and wait > 0


def test_largest_preferred_size_the_queue_can_form_runs_at_once() -> None:
    policy = BatchingPolicy(max_queue_delay_us=10_000_000, preferred_batch_sizes=(2, 4))
    assert plan_batch(q(1, 1, 1, 1, 1, 1), 0, policy, 8) == ([0, 1, 2, 3], 0.0)
    assert plan_batch(q(1, 1, 1), 0, policy, 8) == ([0, 1], 0.0)


def test_incompatible_and_oversized_requests_wait_their_turn() -> None:
    policy = BatchingPolicy(max_queue_delay_us=0)
    queue = [Pending(2, "a", 0), Pending(2, "b", 1), Pending(7, "a", 2), Pending(3, "a", 3)]
    assert plan_batch(queue, 0, policy, 8) == ([0, 3], 0.0)


def test_zero_delay_is_greedy() -> None:
    assert plan_batch(q(1, 1, 1), 0, BatchingPolicy(0), 8) == ([0, 1, 2], 0.0)


def test_restart_backoff() -> None:
    assert restart_delay(0) == 0
    assert [restart_delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert restart_delay(50) == 5.0
