"""inferd's admission policy for continuous batching: which waiting requests join the running batch
at the next step. Pure (plain data in, plain data out, no torch, no clock reads): the engine passes
arrival times it took from its injected clock, so tests drive the policy with made-up numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """A waiting request as the policy sees it."""

    request_id: str
    prompt_tokens: int
    #: The most new tokens it may generate (its `max_tokens`, resolved against the context length).
    max_tokens: int
    #: When it arrived (engine clock); earlier first.
    arrival: float
    #: Its client aborted it while it waited: it leaves the queue without running.
    aborted: bool = False

    @property
    def reserved_tokens(self) -> int:
        """KV-cache tokens it may hold at its longest (prompt + every allowed new token)."""
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class Limits:
    """The engine's capacity, fixed at construction."""

    #: Most sequences in the running batch.
    max_num_seqs: int
    #: Most prompt tokens prefilled in one step (bounds how long one step stalls the running
    #: sequences' decoding). A single prompt over the budget is still admitted when it is the
    #: first of its step, so long prompts cannot starve.
    max_prefill_tokens: int
    #: KV-cache capacity in tokens; admission reserves prompt + max_tokens so a running
    #: sequence never has to be preempted.
    kv_cache_tokens: int


@dataclass(frozen=True, slots=True)
class Admission:
    """The policy's decision for one step."""

    #: Join the batch this step, in this order.
    admit: tuple[str, ...] = ()
    #: Leave the queue without running (aborted while waiting).
    drop: tuple[str, ...] = ()


def admit(
    waiting: Sequence[Candidate], *, running: int, reserved_tokens: int, limits: Limits
) -> Admission:
    """First come, first served, under the sequence cap, the prefill budget and the KV capacity.

    `running` and `reserved_tokens` describe the batch as it stands after this step's finished
    and aborted sequences left it. Admission stops at the first request that does not fit rather
    than skipping ahead to smaller ones: skipping would let a stream of short prompts starve a
    long one forever.
    """
    admitted: list[str] = []
    dropped: list[str] = []
    budget = limits.max_prefill_tokens
    reserved = reserved_tokens
    blocked = False
    # sorted() is stable, so requests that arrived at the same instant keep their queue order.
    for cand in sorted(waiting, key=lambda c: c.arrival):
        if cand.aborted:
            dropped.append(cand.request_id)
            continue
        if blocked:
            continue
        if running + len(admitted) >= limits.max_num_seqs:
            blocked = True
            continue
        over_budget = cand.prompt_tokens > budget
        if over_budget and admitted:
            blocked = True
            continue
        if reserved + cand.reserved_tokens > limits.kv_cache_tokens:
            blocked = True
            continue
        admitted.append(cand.request_id)
        budget -= cand.prompt_tokens
        reserved += cand.reserved_tokens
        if over_budget:
            # The one oversized prompt of this step has used the whole budget.
            blocked = True
    return Admission(admit=tuple(admitted), drop=tuple(dropped))
