"""Turning one step's logits into one token per sequence, each with its own sampling parameters.

Order and semantics follow vLLM: min_tokens masking, then repetition penalty (Hugging Face: over
prompt and output), presence / frequency penalties (OpenAI: over the output only), then greedy
argmax when temperature is 0, else temperature, top-k, top-p and a draw from the sequence's own
generator (so a seeded request samples the same tokens whatever else shares its batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inferd.core.generate import SamplingParams


@dataclass(slots=True)
class RowSampling:
    """What sampling needs to know about one sequence at this step."""

    params: SamplingParams
    generator: torch.Generator | None
    #: Prompt and output token ids so far (the repetition penalty looks at both).
    history: Sequence[int]
    #: How often each token occurs in the output (presence / frequency penalties).
    output_counts: dict[int, int]
    #: Token ids that must not be picked now (EOS and stop tokens before min_tokens).
    banned: tuple[int, ...] = ()


def sample(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """One token id per row of `logits` ([batch, vocab])."""
    # generate() also samples from float32 logits; doing the same keeps greedy output identical.
    logits = logits.to(dtype=torch.float32, copy=True)
    for i, row in enumerate(rows):
        _process(logits[i], row)
    picked = [0] * len(rows)
    greedy = [i for i, row in enumerate(rows) if row.params.greedy]
    if greedy:
        best = logits[greedy].argmax(dim=-1).tolist()
        for i, token in zip(greedy, best, strict=True):
            picked[i] = int(token)
    for i, row in enumerate(rows):
        if not row.params.greedy:
            picked[i] = _draw(logits[i], row.params, row.generator)
    return picked


def _process(scores: torch.Tensor, row: RowSampling) -> None:
    """Apply bans and penalties to one row in place."""
    p = row.params
    if row.banned:
        scores[list(row.banned)] = -float("inf")
    if p.repetition_penalty != 1.0 and row.history:
        ids = torch.tensor(sorted(set(row.history)), dtype=torch.long, device=scores.device)
        seen = scores.gather(0, ids)
        seen = torch.where(seen < 0, seen * p.repetition_penalty, seen / p.repetition_penalty)
        scores.scatter_(0, ids, seen)
    if (p.presence_penalty or p.frequency_penalty) and row.output_counts:
        ids = torch.tensor(list(row.output_counts), dtype=torch.long, device=scores.device)
        counts = torch.tensor(
            list(row.output_counts.values()), dtype=scores.dtype, device=scores.device
        )
        scores.index_add_(0, ids, -(p.frequency_penalty * counts + p.presence_penalty))


def _draw(scores: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    scores = scores / p.temperature
    vocab = scores.shape[-1]
    if 0 < p.top_k < vocab:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if p.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        probs = ordered.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p; the best one stays.
        drop = probs.cumsum(dim=-1) - probs > p.top_p
        drop[0] = False
        scores = scores.scatter(0, order[drop], -float("inf"))
    probs = scores.softmax(dim=-1)
    kwargs: dict[str, Any] = {} if generator is None else {"generator": generator}
    return int(torch.multinomial(probs, num_samples=1, **kwargs).item())
