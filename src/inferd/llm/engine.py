"""LLMEngine: continuous batching of text generation over a Hugging Face causal LM.

Each `step()` is one iteration of the loop a driver thread runs: aborted requests leave, the
running batch decodes one token (one forward pass for all of it), then waiting requests that
inferd's policy (`scheduler.admit`) lets in are prefilled and join the batch. Every sequence
keeps its own KV cache as rows of one left-padded `DynamicCache` (see `batch.py`).

transformers ships its own continuous batching (`init_continuous_batching`), but here it lacks
per-request seeds, penalties, stop strings and min_tokens, never answers a cancelled request,
and schedules on its own thread, so this engine drives the model's forward pass directly.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inferd.core.errors import InvalidInput, ModelLoadError, Unsupported
from inferd.core.generate import GenerateRequest, TokenEvent
from inferd.llm.batch import BatchCache, check_cache_layout, select_rows
from inferd.llm.sampling import RowSampling, sample
from inferd.llm.scheduler import Candidate, Limits, admit
from inferd.llm.sequence import Detokenizer, SequenceState

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine for metrics (vLLM's gauges and counters)."""

    running: int
    waiting: int
    #: Forward passes run so far (prefills and decode steps).
    steps: int
    generated_tokens: int
    prompt_tokens: int
    #: Tokens held in the KV cache / `kv_cache_tokens` (0..1).
    kv_cache_usage: float


@dataclass(slots=True)
class _Waiting:
    seq: SequenceState
    aborted: bool = False


class LLMEngine:
    """Continuous-batching text generation for one model directory.

    `add_request` and `abort` may be called from any thread; `step` from one driver thread.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        max_num_seqs: int = 16,
        max_model_len: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        clock: Callable[[], float] = time.monotonic,
        max_prefill_tokens: int = 2048,
        kv_cache_tokens: int | None = None,
    ) -> None:
        if max_num_seqs < 1:
            raise InvalidInput("max_num_seqs: must be >= 1")
        if dtype not in _DTYPES:
            raise InvalidInput(f"dtype: must be one of {', '.join(_DTYPES)}")
        self._clock = clock
        self.device = torch.device(device)
        self.tokenizer, self.model = _load(Path(model_dir), _DTYPES[dtype], self.device)
        config = self.model.config.get_text_config()
        limit: int | None = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if limit is None and max_model_len is None:
            raise InvalidInput("max_model_len: the model config has no context length; set it")
        if max_model_len is not None and (max_model_len < 2 or (limit and max_model_len > limit)):
            raise InvalidInput(f"max_model_len: must be from 2 to the model's {limit}")
        given = max_model_len if max_model_len is not None else limit
        assert given is not None  # checked just above
        self.max_model_len: int = int(given)
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        capacity = kv_cache_tokens or max_num_seqs * self.max_model_len
        if capacity < self.max_model_len:
            raise InvalidInput("kv_cache_tokens: must hold at least one max_model_len sequence")
        self.limits = Limits(max_num_seqs, max(1, max_prefill_tokens), capacity)
        self._batch = BatchCache()
        self._running: dict[str, SequenceState] = {}
        self._waiting: list[_Waiting] = []
        self._aborts: set[str] = set()
        self._lock = threading.Lock()
        # Fast tokenizers raise "Already borrowed" when two threads use one at once.
        self._tok_lock = threading.Lock()
        self._steps = self._generated = self._prompt_tokens = 0
        accepted = inspect.signature(self.model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns, then goes).
        self._cache_kwarg = "cache" if "cache" in accepted else "past_key_values"
        self._keeps_logits = "logits_to_keep" in accepted
        self._check_layout()

    # ---- requests ------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for a chat, rendered by the tokenizer's own chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidInput("messages: this model has no chat template")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # the template's own checks (roles, order) raise plain errors
            raise InvalidInput(f"messages: {e}") from e
        return str(text)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt. Special tokens (BOS) are added unless the text already starts
        with the BOS token, as a chat template's output does, so it is never doubled."""
        bos = getattr(self.tokenizer, "bos_token", None)
        special = not (bos and prompt.startswith(bos))
        with self._tok_lock:
            return list(self.tokenizer.encode(prompt, add_special_tokens=special))

    def add_request(self, request: GenerateRequest) -> int:
        """Validate and queue a request; returns its prompt token count."""
        params = request.params.validate()
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in ids):
                raise InvalidInput(
                    f"prompt: token ids must be integers from 0 to {self.vocab_size - 1}"
                )
        elif request.prompt:
            ids = self.encode(request.prompt)
        else:
            ids = []
        if not ids:
            raise InvalidInput("prompt: must not be empty")
        room = self.max_model_len - len(ids)
        if room < 1:
            raise InvalidInput(
                f"prompt: {len(ids)} tokens leave no room in the model's context length "
                f"({self.max_model_len})"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise InvalidInput(
                f"max_tokens: prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) "
                f"exceeds the model's context length ({self.max_model_len})"
            )
        max_tokens = params.max_tokens or room
        if params.min_tokens > max_tokens:
            raise InvalidInput("min_tokens: must not exceed max_tokens")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seq = SequenceState(
            request_id=request.request_id,
            prompt_ids=ids,
            params=params,
            max_tokens=max_tokens,
            eos_ids=self.eos_ids,
            detokenizer=Detokenizer(self._decode, ids),
            generator=generator,
            arrival=self._clock(),
        )
        with self._lock:
            if request.request_id in self._running or any(
                w.seq.request_id == request.request_id for w in self._waiting
            ):
                raise InvalidInput(f"request_id: {request.request_id!r} is already in progress")
            self._waiting.append(_Waiting(seq))
        return len(ids)

    def abort(self, request_id: str) -> None:
        """Stop a request; its slot is freed and its final event (finish_reason "abort")
        comes out of the next step. Unknown or finished ids are ignored."""
        with self._lock:
            for w in self._waiting:
                if w.seq.request_id == request_id:
                    w.aborted = True
                    return
            if request_id in self._running:
                self._aborts.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting or self._running or self._aborts)

    @property
    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting)
            held = sum(s.prompt_tokens + len(s.output_ids) for s in self._running.values())
            return EngineStats(
                running=len(self._running),
                waiting=waiting,
                steps=self._steps,
                generated_tokens=self._generated,
                prompt_tokens=self._prompt_tokens,
                kv_cache_usage=held / self.limits.kv_cache_tokens,
            )

    # ---- the loop ------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """One iteration: aborts, one decode for the running batch, admissions with prefill."""
        events: list[TokenEvent] = []
        with self._lock:
            aborts, self._aborts = self._aborts, set()
        for rid in aborts:
            seq = self._running.get(rid)
            if seq is not None:
                events.append(seq.finish("abort"))
        self._retire()
        if self._running:
            events.extend(self._decode_step())
        admitted = self._admit(events)
        if admitted:
            events.extend(self._prefill(admitted))
        return events

    def _admit(self, events: list[TokenEvent]) -> list[SequenceState]:
        with self._lock:
            reserved = sum(s.prompt_tokens + s.max_tokens for s in self._running.values())
            candidates = [
                Candidate(
                    w.seq.request_id,
                    w.seq.prompt_tokens,
                    w.seq.max_tokens,
                    w.seq.arrival,
                    w.aborted,
                )
                for w in self._waiting
            ]
            decision = admit(
                candidates, running=len(self._running), reserved_tokens=reserved, limits=self.limits
            )
            chosen = set(decision.admit) | set(decision.drop)
            by_id = {w.seq.request_id: w.seq for w in self._waiting}
            self._waiting = [w for w in self._waiting if w.seq.request_id not in chosen]
            admitted = [by_id[rid] for rid in decision.admit]
            # Running from here on, so that abort() finds them while they prefill.
            self._running.update((s.request_id, s) for s in admitted)
        events.extend(by_id[rid].finish("abort") for rid in decision.drop)
        return admitted

    def _decode_step(self) -> list[TokenEvent]:
        seqs = [self._running[rid] for rid in self._batch.ids]
        try:
            with torch.inference_mode():
                mask, positions = self._batch.decode_inputs(self.device)
                ids = torch.tensor([[s.last_token] for s in seqs], device=self.device)
                logits = self._forward(ids, mask, self._batch.cache, positions)
                events = self._sample(logits, seqs)
        except Exception as e:
            # The shared cache may be half-updated: every sequence in it fails, the engine lives.
            self._batch.clear()
            return self._fail(seqs, e)
        self._retire()
        return events

    def _prefill(self, seqs: list[SequenceState]) -> list[TokenEvent]:
        """Prefill admitted prompts, equal lengths together (no padding), then batch them."""
        groups: dict[int, list[SequenceState]] = {}
        for s in seqs:
            groups.setdefault(s.prompt_tokens, []).append(s)
        events: list[TokenEvent] = []
        for group in groups.values():
            try:
                with torch.inference_mode():
                    from transformers import DynamicCache

                    cache = DynamicCache()
                    ids = torch.tensor([s.prompt_ids for s in group], device=self.device)
                    logits = self._forward(ids, torch.ones_like(ids), cache)
                    self._prompt_tokens += sum(s.prompt_tokens for s in group)
                    events.extend(self._sample(logits, group))
            except Exception as e:
                events.extend(self._fail(group, e))
                continue
            live = [i for i, s in enumerate(group) if not s.finished]
            if live:
                if len(live) < len(group):
                    select_rows(cache, live)
                self._batch.add([group[i].request_id for i in live], cache)
            self._retire()
        return events

    def _sample(self, logits: torch.Tensor, seqs: Sequence[SequenceState]) -> list[TokenEvent]:
        rows = [
            RowSampling(s.params, s.generator, s.history(), s.output_counts, s.banned())
            for s in seqs
        ]
        tokens = sample(logits, rows)
        events = []
        for seq, token in zip(seqs, tokens, strict=True):
            if seq.finished:  # defensive: a finished sequence never takes another token
                continue
            self._generated += 1
            try:
                events.append(seq.append(token))
            except Exception as e:  # detokenizing this one request failed: only it ends
                events.append(seq.finish("error", error=f"{type(e).__name__}: {e}"))
        return events

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One forward pass that appends to `cache`; the last position's logits per row."""
        self._steps += 1
        kwargs: dict[str, Any] = {self._cache_kwarg: cache}
        if positions is not None:
            kwargs["position_ids"] = positions
        if self._keeps_logits:
            # Only the last position is sampled: skip the LM head everywhere else.
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _fail(self, seqs: Sequence[SequenceState], error: Exception) -> list[TokenEvent]:
        text = f"{type(error).__name__}: {error}"
        events = [s.finish("error", error=text) for s in seqs if not s.finished]
        self._retire()
        return events

    def _retire(self) -> None:
        """Take finished sequences out of the running set and the batch."""
        done = [rid for rid, s in self._running.items() if s.finished]
        if not done:
            return
        self._batch.remove(set(done))
        with self._lock:
            for rid in done:
                self._running.pop(rid, None)
                self._aborts.discard(rid)

    # ---- setup ---------------------------------------------------------------------------

    def _decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _check_layout(self) -> None:
        """Refuse a model whose KV cache cannot be batched: at load, not mid-request."""
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = torch.tensor([[0, 0]], device=self.device)
        with torch.inference_mode():
            self._forward(ids, torch.ones_like(ids), cache)
        self._steps = 0
        why = check_cache_layout(cache)
        if why is not None:
            raise Unsupported(f"LLM engine: {why}")


def _load(model_dir: Path, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    try:
        # Never the model repo's own code, never the network, never pickled weights.
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=False, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            trust_remote_code=False,
            local_files_only=True,
            use_safetensors=True,
            dtype=dtype,
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load {model_dir}: {type(e).__name__}: {e}") from e
    loaded: Any = model
    return tokenizer, loaded.to(device).eval()


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
