"""Routing metrics: circuit breaker states, fallbacks and shadow comparisons, with labels
{model, version}."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Absolute differences between a shadow's outputs and the answer's.
DIFF_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)


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

        self._shadow = Counter("inferd_shadow_requests",
                               "Copies of answered requests sent to a shadow, by outcome: agreed, "
                               "differed, failed, dropped (too many in flight)",
                               ["model", "version", "shadow_model", "shadow_version", "outcome"],
                               registry=registry)  # fmt: skip
        self._shadow_diff = Histogram("inferd_shadow_abs_diff",
                                      "Largest absolute difference between a shadow's numeric "
                                      "outputs and the answer's, per compared request",
                                      ["model", "version", "shadow_model", "shadow_version"],
                                      buckets=DIFF_BUCKETS, registry=registry)  # fmt: skip

    def shadow(self, model: str, version: str, to_model: str, to_version: str, outcome: str,
               diff: float | None) -> None:  # fmt: skip
        self._shadow.labels(model, version, to_model, to_version, outcome).inc()
        if diff is not None:
            self._shadow_diff.labels(model, version, to_model, to_version).observe(diff)

    def breaker_state(self, model: str, version: str, value: int) -> None:
        self._state.labels(model, version).set(value)

    def fallback(self, model: str, version: str, to_model: str, to_version: str) -> None:
        self._fallbacks.labels(model, version, to_model, to_version).inc()
