"""Routing metrics: circuit breaker states and fallbacks, with labels {model, version}."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RoutingMetrics:
    """`inferd_circuit_breaker_state` (0 closed, 1 open, 2 half open) per revision and
    `inferd_fallback_requests_total` by the revision that failed and the one that answered."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._state = Gauge("inferd_circuit_breaker_state",
                            "A revision's circuit breaker: 0 closed, 1 open, 2 half open",
                            ["model", "version"], registry=registry)  # fmt: skip
        self._fallbacks = Counter("inferd_fallback_requests",
                                  "Requests answered by a fallback after their revision failed",
                                  ["model", "version", "fallback_model", "fallback_version"],
                                  registry=registry)  # fmt: skip

    def breaker_state(self, model: str, version: str, value: int) -> None:
        self._state.labels(model, version).set(value)

    def fallback(self, model: str, version: str, to_model: str, to_version: str) -> None:
        self._fallbacks.labels(model, version, to_model, to_version).inc()
