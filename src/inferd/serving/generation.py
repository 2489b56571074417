"""Text generation on served `runtime: llm` models: pick a replica, stream its token events,
record the LLM metrics (time to first token, inter-token latency, tokens, running / waiting)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from inferd.core.errors import ModelExecutionError, ModelNotReady, Unsupported
from inferd.core.generate import GenerateRequest, TokenEvent
from inferd.observability.metrics import LLMMetrics
from inferd.serving.engine import InferenceEngine, ServedVersion
from inferd.workers.llm_backend import LLMBackend


class Generation:
    """The engine's generative side; adapters (OpenAI, V2 generate) make one call per request."""

    def __init__(
        self,
        engine: InferenceEngine,
        metrics: LLMMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.clock = clock

    def generator(self, name: str, version: str | None = None) -> tuple[ServedVersion, LLMBackend]:
        """The version and the generator replica that takes a new request (admission, the
        draining check included, is the data plane's: `api.dataplane.DataPlane.admit`)."""
        sv = self.engine.version(name, version)
        if sv.runtime_name != "llm":
            raise Unsupported(f"model '{name}' does not generate text (runtime {sv.runtime_name})")
        live: list[LLMBackend] = []
        for slot in sv.scheduler.live():
            if isinstance(slot.replica, LLMBackend) and slot.replica.alive:
                live.append(slot.replica)
        if not live:
            raise ModelNotReady(f"model '{name}' has no running generator")
        # the backend with the fewest streams takes the request
        return sv, min(live, key=lambda g: g.inflight)

    async def chat_prompt(
        self, name: str, messages: list[dict[str, Any]], version: str | None = None
    ) -> str:
        _, gen = self.generator(name, version)
        return await gen.chat_prompt(messages)

    async def stream(
        self, name: str, version: str | None, request: GenerateRequest
    ) -> AsyncIterator[TokenEvent]:
        """Token events of one request; closing the iterator early aborts the request. A
        generation that fails raises `ModelExecutionError` (after its metrics are recorded):
        callers never see an `error` event."""
        sv, gen = self.generator(name, version)
        labels = (sv.name, sv.version)
        m = self.metrics
        start = last = self.clock()
        first = True
        prompt_counted = False
        self.engine.enter()
        sv.enter()  # a revision that stops being served unloads once its streams end
        try:
            async for ev in gen.generate(request):
                now = self.clock()
                if not prompt_counted:
                    m.prompt_tokens.labels(*labels).inc(ev.prompt_tokens)
                    prompt_counted = True
                if ev.token_ids:
                    if first:
                        m.ttft.labels(*labels).observe(now - start)
                        first = False
                    else:
                        m.itl.labels(*labels).observe((now - last) / len(ev.token_ids))
                    m.generation_tokens.labels(*labels).inc(len(ev.token_ids))
                    last = now
                if ev.finished:
                    m.e2e.labels(*labels).observe(now - start)
                    m.finished.labels(*labels, ev.finish_reason or "stop").inc()
                self._gauges(sv, gen)
                if ev.finish_reason == "error":
                    raise ModelExecutionError(f"generation failed: {ev.error}")
                yield ev
        finally:
            self.engine.leave()
            sv.leave()
            self._gauges(sv, gen)

    def _gauges(self, sv: ServedVersion, gen: LLMBackend) -> None:
        stats = gen.stats
        if stats is None:
            return
        labels = (sv.name, sv.version)
        self.metrics.running.labels(*labels).set(getattr(stats, "running", 0))
        self.metrics.waiting.labels(*labels).set(getattr(stats, "waiting", 0))
        self.metrics.kv_cache_usage.labels(*labels).set(getattr(stats, "kv_cache_usage", 0.0))
