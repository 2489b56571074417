"""Dynamic batching decisions: pure functions of the queue and the time (no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from inferd.core.spec import BatchingPolicy

#: Request parameters that steer the server, not the model: they never split batches.
RESERVED_PARAMETERS = frozenset(
    {"timeout", "priority", "binary_data_output", "headers", "sequence_id", "sequence_start",
     "sequence_end"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pending:
    """What the batching policy needs to know about one queued request."""

    rows: int
    key: Hashable
    enqueued_ns: int


def plan_batch(
    queue: Sequence[Pending], now_ns: int, policy: BatchingPolicy | None, max_rows: int
) -> tuple[list[int], float]:
    """Decide what to run now: (indices into `queue`, 0) or ([], seconds to wait for more).

    The oldest request leads; later requests join when compatible (same key) and when they fit
    in `max_rows`. The batch runs at once when full; else, if the queue can form a batch of a
    preferred size, the largest such batch runs at once; else everything gathered runs when the
    oldest request has waited `max_queue_delay`.
    """
    if not queue:
        return [], 0.0
    first = queue[0]
    if policy is None or max_rows <= 0:
        return [0], 0.0
    preferred = policy.preferred_batch_sizes
    take = [0]
    rows = first.rows
    at_preferred = 1 if rows in preferred else 0  # longest prefix of `take` at a preferred size
    for i in range(1, len(queue)):
        if rows >= max_rows:
            break
        item = queue[i]
        if item.key == first.key and rows + item.rows <= max_rows:
            take.append(i)
            rows += item.rows
            if rows in preferred:
                at_preferred = len(take)
    if rows >= max_rows:
        return take, 0.0
    if at_preferred:
        return take[:at_preferred], 0.0
    remaining_ns = policy.max_queue_delay_us * 1000 - (now_ns - first.enqueued_ns)
    if remaining_ns <= 0:
        return take, 0.0
    return [], remaining_ns / 1e9


def restart_delay(failures: int, base_s: float = 0.05, cap_s: float = 5.0) -> float:
    """Backoff before restarting a replica that failed `failures` times in a row."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** (failures - 1)))
