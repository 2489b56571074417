"""Text generation as pure types: a request with its sampling parameters, and the events a
generation produces (new tokens and text, then a finish reason and token counts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from inferd.core.errors import InvalidField

FINISH_REASONS = ("stop", "length", "abort", "error")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop (OpenAI / vLLM semantics)."""

    #: Most new tokens; None = up to the model's context length.
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    #: 0 = off.
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    min_tokens: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> SamplingParams:
        """Raise InvalidInput naming the first bad field."""

        def bad(name: str, why: str) -> InvalidField:
            return InvalidField(name, why)

        if self.max_tokens is not None and (not _int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", "must be an integer >= 1")
        if not _num(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            raise bad("temperature", "must be a number from 0 to 2")
        if not _num(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be a number in (0, 1]")
        if not _int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "must be an integer >= 0 (0 = off)")
        if self.seed is not None and not _int(self.seed):
            raise bad("seed", "must be an integer")
        if len(self.stop) > 16 or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be up to 16 non-empty strings")
        if not all(_int(t) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be token ids (integers >= 0)")
        if not _num(self.repetition_penalty) or not 0.0 < self.repetition_penalty <= 10.0:
            raise bad("repetition_penalty", "must be a number in (0, 10]")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _num(v) or not -2.0 <= v <= 2.0:
                raise bad(name, "must be a number from -2 to 2")
        if not _int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", "must be an integer >= 0")
        return self


def _integer(name: str, v: Any) -> int:
    if not _int(v):
        raise InvalidField(name, "must be an integer")
    return int(v)


def _number(name: str, v: Any) -> float:
    if not _num(v):
        raise InvalidField(name, "must be a number")
    return float(v)


def _boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise InvalidField(name, "must be true or false")
    return v


def _strings(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list | tuple) and all(isinstance(s, str) for s in v):
        return tuple(v)
    raise InvalidField(name, "must be a string or a list of strings")


def _token_ids(name: str, v: Any) -> tuple[int, ...]:
    if _int(v):
        return (v,)
    if isinstance(v, list | tuple) and all(_int(t) for t in v):
        return tuple(v)
    raise InvalidField(name, "must be a list of token ids (integers)")


def _top_k(name: str, v: Any) -> int:
    return max(_integer(name, v), 0)  # vLLM's -1 means "off", as 0 does here


#: Every sampling field a request may carry, with its check (OpenAI / vLLM names and types).
_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "max_tokens": _integer, "temperature": _number, "top_p": _number, "top_k": _top_k,
    "seed": _integer, "stop": _strings, "stop_token_ids": _token_ids,
    "repetition_penalty": _number, "presence_penalty": _number, "frequency_penalty": _number,
    "ignore_eos": _boolean, "min_tokens": _integer,
}  # fmt: skip


def parse_sampling(doc: Mapping[str, Any], **defaults: Any) -> SamplingParams:
    """The one parser of sampling fields, used by every protocol (OpenAI bodies, V2 generate
    and infer parameters, gRPC parameters, WebSocket messages).

    Fields use OpenAI / vLLM names; a field that is absent or null takes `defaults`, then the
    `SamplingParams` default. Keys that are not sampling fields are left alone (they belong to
    the protocol or the runtime). Raises `InvalidField` naming the first bad field.
    """
    given = {name: check(name, doc[name]) for name, check in _FIELDS.items()
             if doc.get(name) is not None}  # fmt: skip
    return replace(SamplingParams(), **{**defaults, **given}).validate()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(slots=True)
class GenerateRequest:
    """One generation: a prompt (text or token ids) and how to sample."""

    request_id: str
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """What one engine step produced for one request.

    `text` is the new text since the previous event (held back while it could still be the
    start of a stop string; a stop string itself is never emitted). The last event of a request
    has `finished=True` and a `finish_reason`.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool = False
    #: "stop" (EOS, stop string or stop token), "length", "abort" or "error".
    finish_reason: str | None = None
    #: The stop string or stop token id that ended it, if any.
    stop_reason: str | int | None = None
    error: str | None = None
