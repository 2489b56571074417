"""What serving asks of an LLM engine (`LLMBackend`, in the spirit of vLLM's `EngineClient`), and
the chat template, rendered in the server process (`ChatTemplate`).

inferd's own engine implements `LLMBackend` twice: `ThreadGenerator` (the engine on a thread of
the server) and `ProcessGenerator` (the engine in a worker process, over its
`WorkerConnection`); both share `GeneratorBase`. Another engine plugs in by implementing the
same methods: see docs/architecture.md, "An LLM backend".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from inferd.core.errors import InvalidInput
from inferd.core.generate import GenerateRequest, TokenEvent

log = logging.getLogger("inferd.generation")


@runtime_checkable
class LLMBackend(Protocol):
    """A running generation engine, as the serving layer uses it.

    `generate` yields the request's events as the engine produces them (the last one has
    `finished` set) and aborts the request when the iterator is closed early; `abort` drops a
    running request (its last event says "abort"). `stats` are the engine's counters (running,
    waiting, steps, generated_tokens, prompt_tokens, kv_cache_usage) for the gauges;
    `max_model_len` caps prompt plus completion; `chat_prompt` renders OpenAI chat messages
    with the model's chat template."""

    label: str
    max_model_len: int | None

    @property
    def alive(self) -> bool: ...

    @property
    def stats(self) -> Any: ...

    @property
    def inflight(self) -> int:
        """Requests this backend is streaming now (the least busy one takes the next)."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[TokenEvent]: ...

    async def abort(self, request_id: str) -> None: ...

    async def chat_prompt(self, messages: list[dict[str, Any]]) -> str: ...


class ChatTemplate:
    """The chat template of a tokenizer, rendered where the tokenizer is held: in the server
    for a worker-process engine, so a chat request costs no round trip to the worker."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def load(cls, path: Path) -> ChatTemplate | None:
        """The template of the tokenizer files in a model folder (`tokenizer.json` and
        `tokenizer_config.json` / `chat_template.jinja`: data, never the folder's code, never
        the network). `PreTrainedTokenizerFast` rather than `AutoTokenizer`, which imports
        torch into the server. None where they cannot be read this way or hold no template:
        the engine then renders it (the worker's own tokenizer)."""
        try:
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(
                path, trust_remote_code=False, local_files_only=True
            )
        except Exception as e:  # a tokenizer only its own class can read: the worker renders
            log.info("chat template of %s is rendered by its engine: %s: %s", path,
                     type(e).__name__, e)  # fmt: skip
            return None
        if not getattr(tokenizer, "chat_template", None):
            return None
        return cls(tokenizer)

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for a chat, with the assistant's turn opened."""
        if not isinstance(messages, list):
            raise InvalidInput("messages: must be a list")
        if not getattr(self._tokenizer, "chat_template", None):
            raise InvalidInput("messages: this model has no chat template")
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # the template's own checks (roles, order) raise plain errors
            raise InvalidInput(f"messages: {e}") from e
        return str(text)
