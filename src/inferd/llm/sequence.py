"""One request's generation state: its tokens, its incremental text, and when it stops.

No torch here: the engine hands in each sampled token id and gets back what to emit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferd.core.generate import SamplingParams, TokenEvent

#: Token ids -> text (the engine binds the tokenizer, skipping special tokens).
Decode = Callable[[Sequence[int]], str]

#: How many prompt tokens the incremental detokenizer decodes as context, so the first output
#: token's text comes out as it would mid-sentence (e.g. its leading space).
_CONTEXT_TOKENS = 5


class Detokenizer:
    """Incremental detokenization (vLLM's offsets): each new token costs one short decode.

    Text is released only once it no longer ends in a replacement character, i.e. once a token
    that completes a multi-byte character has arrived.
    """

    def __init__(self, decode: Decode, prompt_ids: Sequence[int]) -> None:
        self._decode = decode
        self._ids = list(prompt_ids)
        self._prefix = max(len(self._ids) - _CONTEXT_TOKENS, 0)
        self._read = len(self._ids)

    def add(self, token: int) -> str:
        self._ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character), at the end of the request."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


@dataclass(eq=False)
class SequenceState:
    """A request from admission to its last event."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    #: max_tokens resolved against the context length.
    max_tokens: int
    #: Token ids that end the request unless ignore_eos (the model's and tokenizer's EOS).
    eos_ids: frozenset[int]
    detokenizer: Detokenizer
    #: torch.Generator for seeded sampling (typed loosely to keep this module torch-free).
    generator: Any = None
    arrival: float = 0.0
    output_ids: list[int] = field(default_factory=list)
    output_counts: Counter[int] = field(default_factory=Counter)
    text: str = ""
    emitted: int = 0
    finished: bool = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    def history(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def banned(self) -> tuple[int, ...]:
        """Ids that may not be sampled yet: every stopping token before min_tokens."""
        if len(self.output_ids) >= self.params.min_tokens:
            return ()
        stops = set(self.params.stop_token_ids)
        if not self.params.ignore_eos:
            stops |= self.eos_ids
        return tuple(sorted(stops))

    def append(self, token: int) -> TokenEvent:
        """Take one sampled token; return the event to emit (finished when it stopped)."""
        self.output_ids.append(token)
        self.output_counts[token] += 1
        p = self.params
        # vLLM semantics: no stop condition applies before min_tokens.
        checks = len(self.output_ids) >= p.min_tokens
        reason: str | None = None
        stop_reason: str | int | None = None
        if checks and not p.ignore_eos and token in self.eos_ids:
            reason = "stop"
        elif checks and token in p.stop_token_ids:
            reason, stop_reason = "stop", token
        else:
            # A stopping token's own text is never emitted, so it is not detokenized at all.
            before = len(self.text)
            self.text += self.detokenizer.add(token)
            if checks and p.stop:
                hit = self._find_stop(before)
                if hit is not None:
                    reason, stop_reason = "stop", hit
        if reason is None and len(self.output_ids) >= self.max_tokens:
            reason = "length"
            self.text += self.detokenizer.flush()
        if reason is not None:
            return self.finish(reason, stop_reason, tokens=(token,))
        end = len(self.text) - held_back(self.text, p.stop)
        return self._event((token,), end)

    def finish(
        self,
        reason: str,
        stop_reason: str | int | None = None,
        *,
        tokens: tuple[int, ...] = (),
        error: str | None = None,
    ) -> TokenEvent:
        """The request's last event; text held back for a possible stop string is released
        unless the request was aborted or failed (nobody reads it then)."""
        self.finished = True
        end = len(self.text) if reason in ("stop", "length") else self.emitted
        return self._event(tokens, end, reason=reason, stop_reason=stop_reason, error=error)

    def _find_stop(self, before: int) -> str | None:
        """Cut the text at the earliest stop string that the new text completed."""
        best: tuple[int, str] | None = None
        for stop in self.params.stop:
            # Only matches that end in the new text: older text was already checked.
            at = self.text.find(stop, max(before - len(stop) + 1, 0))
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        self.text = self.text[: best[0]]
        return best[1]

    def _event(
        self,
        tokens: tuple[int, ...],
        end: int,
        *,
        reason: str | None = None,
        stop_reason: str | int | None = None,
        error: str | None = None,
    ) -> TokenEvent:
        # A stop string cut can shorten the text below what was emitted only if it was held
        # back correctly; max() keeps the offsets sane regardless.
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted : end], end
        return TokenEvent(
            request_id=self.request_id,
            token_ids=tokens,
            text=delta,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.output_ids),
            finished=reason is not None,
            finish_reason=reason,
            stop_reason=stop_reason,
            error=error,
        )
