"""A canary rollout's plan and its analysis: pure values and one pure judgement.

The control plane parses a plan (`parse_canary`) and runs it step by step (control/rollouts.py);
the data plane records each answered request of a watched model in its revision's `Window`
(outcome and latency); at every check the rollout reads a `Sample` of the stable and of the
canary revision and `judge` says whether the canary passes, fails, or has not served enough
requests yet, with the figures it used and the reasons for a failure. Percentiles are numpy's.
Time is passed in (`now`, seconds on a monotonic clock): no clock is read here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferd.core.errors import InvalidField
from inferd.core.routing import number_field

PERCENTILES = ("p50", "p95", "p99")
PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass(frozen=True, slots=True)
class Analysis:
    """When a canary fails a check, over the outcomes of the last `window_s` seconds of a step.

    It fails when its error rate is above `max_error_rate`, or above the stable revision's by
    more than `max_error_rate_increase`; or when one of its latency percentiles is more than
    `max_latency_ratio[p]` times the stable revision's and slower by more than
    `latency_tolerance_ms` (differences below that are noise, never a failure). Nothing is
    judged before the canary has `min_requests` outcomes in the window (the latency comparison
    also needs the stable revision to have `min_requests` answers)."""

    window_s: float = 60.0
    min_requests: int = 20
    max_error_rate: float = 0.05
    max_error_rate_increase: float = 0.01
    max_latency_ratio: tuple[tuple[str, float], ...] = (("p50", 1.5), ("p95", 2.0), ("p99", 3.0))
    latency_tolerance_ms: float = 5.0

    def doc(self) -> dict[str, Any]:
        return {"window_s": self.window_s, "min_requests": self.min_requests,
                "max_error_rate": self.max_error_rate,
                "max_error_rate_increase": self.max_error_rate_increase,
                "max_latency_ratio": dict(self.max_latency_ratio),
                "latency_tolerance_ms": self.latency_tolerance_ms}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CanaryPlan:
    """Steps of the canary's share (whole percentages, increasing; reaching 100 — or passing
    the last step — promotes it), how long each step lasts at least (`dwell_s`), how often it
    is checked (`interval_s`), and the analysis. Without `auto_promote` the canary stays at
    its last step (still analysed, still rolled back by a failed check) until it is promoted
    by hand — a fixed canary share, as `inferd deploy --canary 10` makes."""

    steps: tuple[int, ...] = (5, 25, 50, 100)
    dwell_s: float = 60.0
    interval_s: float = 5.0
    analysis: Analysis = field(default_factory=Analysis)
    auto_promote: bool = True

    def doc(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "dwell_s": self.dwell_s,
                "interval_s": self.interval_s, "analysis": self.analysis.doc(),
                "auto_promote": self.auto_promote}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sample:
    """One revision's figures over a window: requests judged, errors, error rate, and the
    latency percentiles of its answers in milliseconds (None: none answered)."""

    requests: int
    errors: int
    latency_ms: dict[str, float] | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def doc(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 6), "latency_ms": self.latency_ms}  # fmt: skip


#: Outcomes a window keeps at most (the oldest go first).
MAX_OUTCOMES = 200_000


class Window:
    """One revision's recent outcomes: (when, failed, seconds taken)."""

    __slots__ = ("_outcomes",)

    def __init__(self) -> None:
        self._outcomes: deque[tuple[float, bool, float]] = deque(maxlen=MAX_OUTCOMES)

    def add(self, now: float, failed: bool, seconds: float) -> None:
        self._outcomes.append((now, failed, seconds))

    def sample(self, now: float, window_s: float) -> Sample:
        """The figures of the outcomes of the last `window_s` seconds (older ones are dropped)."""
        outcomes = self._outcomes
        while outcomes and now - outcomes[0][0] > window_s:
            outcomes.popleft()
        errors = sum(1 for _, failed, _ in outcomes if failed)
        answered = [s for _, failed, s in outcomes if not failed]
        latency = None
        if answered:
            ms = np.percentile(np.asarray(answered) * 1000.0, [50, 95, 99])
            latency = {p: round(float(v), 3) for p, v in zip(PERCENTILES, ms, strict=True)}
        return Sample(len(outcomes), errors, latency)


@dataclass(frozen=True, slots=True)
class Verdict:
    """`pass`, `fail` or `wait` (not enough requests yet), the figures, and why it failed."""

    state: str
    stable: Sample
    canary: Sample
    reasons: tuple[str, ...] = ()

    def doc(self) -> dict[str, Any]:
        return {"verdict": self.state, "stable": self.stable.doc(), "canary": self.canary.doc(),
                "reasons": list(self.reasons)}  # fmt: skip


def judge(stable: Sample, canary: Sample, analysis: Analysis) -> Verdict:
    """Compare the canary with the stable revision by `analysis`."""
    if canary.requests < analysis.min_requests:
        return Verdict(WAIT, stable, canary)
    reasons = []
    if canary.error_rate > analysis.max_error_rate:
        reasons.append(f"error rate {canary.error_rate:.4f} above max_error_rate "
                       f"{analysis.max_error_rate:g}")  # fmt: skip
    increase = canary.error_rate - stable.error_rate
    if stable.requests and increase > analysis.max_error_rate_increase:
        reasons.append(f"error rate {canary.error_rate:.4f} is {increase:.4f} above the stable "
                       f"revision's {stable.error_rate:.4f} (max_error_rate_increase "
                       f"{analysis.max_error_rate_increase:g})")  # fmt: skip
    ours, theirs = canary.latency_ms, stable.latency_ms
    if ours is not None and theirs is not None and stable.requests >= analysis.min_requests:
        for p, ratio in analysis.max_latency_ratio:
            slower = ours[p] - theirs[p]
            if slower > analysis.latency_tolerance_ms and ours[p] > ratio * theirs[p]:
                reasons.append(f"{p} latency {ours[p]:.3f} ms above {ratio:g} x the stable "
                               f"revision's {theirs[p]:.3f} ms")  # fmt: skip
    return Verdict(FAIL if reasons else PASS, stable, canary, tuple(reasons))


# ---- parsing -------------------------------------------------------------------------------

PLAN_FIELDS = {"steps", "dwell_s", "interval_s", "analysis", "auto_promote"}
ANALYSIS_FIELDS = {"window_s", "min_requests", "max_error_rate", "max_error_rate_increase",
                   "max_latency_ratio", "latency_tolerance_ms"}  # fmt: skip


def parse_canary(raw: Any, field: str = "canary") -> CanaryPlan:
    """A canary plan from JSON (every part optional), refusing anything out of range with
    `InvalidField` naming the field."""
    if raw is None:
        return CanaryPlan()
    if not isinstance(raw, Mapping):
        raise InvalidField(field, f"must be an object with {', '.join(sorted(PLAN_FIELDS))}")
    _known(raw, PLAN_FIELDS, field)
    d = CanaryPlan()
    auto = raw.get("auto_promote", True)
    if not isinstance(auto, bool):
        raise InvalidField(f"{field}.auto_promote", "must be true or false")
    return CanaryPlan(
        _steps(raw.get("steps", list(d.steps)), f"{field}.steps"),
        number_field(raw, "dwell_s", d.dwell_s, field, 0.0, 86_400.0),
        number_field(raw, "interval_s", d.interval_s, field, 0.05, 3_600.0),
        _analysis(raw.get("analysis"), f"{field}.analysis"),
        auto,
    )


def _known(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise InvalidField(f"{where}.{sorted(unknown)[0]}", "unknown field")


def _steps(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > 20:
        raise InvalidField(where, "must be a list of 1 to 20 percentages")
    for i, s in enumerate(raw):
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100:
            raise InvalidField(f"{where}[{i}]", "must be a whole percentage from 1 to 100")
        if i and s <= raw[i - 1]:
            raise InvalidField(f"{where}[{i}]", "steps must increase")
    return tuple(raw)


def _analysis(raw: Any, where: str) -> Analysis:
    if raw is None:
        return Analysis()
    if not isinstance(raw, Mapping):
        raise InvalidField(where, f"must be an object with {', '.join(sorted(ANALYSIS_FIELDS))}")
    _known(raw, ANALYSIS_FIELDS, where)
    d = Analysis()
    ratios = dict(d.max_latency_ratio)
    given = raw.get("max_latency_ratio")
    if given is not None:
        at = f"{where}.max_latency_ratio"
        if not isinstance(given, Mapping):
            raise InvalidField(at, 'must be an object such as {"p50": 1.5, "p99": 3}')
        _known(given, set(PERCENTILES), at)
        for p in given:
            ratios[p] = number_field(given, p, 0.0, at, 1.0, 1000.0)
    return Analysis(
        number_field(raw, "window_s", d.window_s, where, 0.1, 86_400.0),
        int(number_field(raw, "min_requests", d.min_requests, where, 1, 1_000_000, whole=True)),
        number_field(raw, "max_error_rate", d.max_error_rate, where, 0.0, 1.0),
        number_field(raw, "max_error_rate_increase", d.max_error_rate_increase, where, 0.0, 1.0),
        tuple((p, ratios[p]) for p in PERCENTILES),
        number_field(raw, "latency_tolerance_ms", d.latency_tolerance_ms, where, 0.0, 3_600_000.0),
    )
