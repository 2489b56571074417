"""The canary analysis: windows of outcomes, percentiles, the verdict's thresholds, and plans
parsed with every bad field named."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.core.canary import (
    FAIL,
    PASS,
    WAIT,
    Analysis,
    Sample,
    Window,
    judge,
    parse_canary,
)
from inferd.core.errors import InvalidField


def test_a_window_keeps_only_recent_outcomes_and_takes_percentiles_of_answers() -> None:
    w = Window()
    rng = np.random.default_rng(3)
    latencies = rng.exponential(0.01, 500)
    for i, s in enumerate(latencies):
        w.add(100.0 + i * 0.01, False, float(s))
    w.add(99.0, True, 0.0)  # inside a 10 s window read at 105 s, outside a 5 s one at 110 s
    for _ in range(5):
        w.add(105.0, True, 0.0)  # failures carry no latency
    sample = w.sample(now=105.0, window_s=10.0)
    assert (sample.requests, sample.errors) == (506, 6)
    expected = np.percentile(latencies * 1000, [50, 95, 99])
    assert sample.latency_ms is not None
    assert [sample.latency_ms[p] for p in ("p50", "p95", "p99")] == pytest.approx(
        expected, abs=1e-3
    )
    later = w.sample(now=110.0, window_s=5.0)  # only what happened from 105 s on
    assert later.requests == sum(1 for i in range(500) if 100 + i * 0.01 >= 105) + 5
    assert Window().sample(0.0, 1.0) == Sample(0, 0, None)


def _s(requests: int, errors: int, p50: float = 10.0, p95: float = 20.0, p99: float = 30.0
       ) -> Sample:  # fmt: skip
    return Sample(requests, errors, {"p50": p50, "p95": p95, "p99": p99})


def test_the_verdict_waits_for_enough_canary_requests() -> None:
    a = Analysis(min_requests=20)
    v = judge(_s(1000, 0), _s(19, 19), a)
    assert v.state == WAIT and v.reasons == ()
    assert judge(_s(1000, 0), _s(20, 0), a).state == PASS


def test_error_rate_absolute_and_relative_to_the_stable_revision() -> None:
    a = Analysis(min_requests=10, max_error_rate=0.05, max_error_rate_increase=0.01)
    v = judge(_s(100, 0), _s(100, 6), a)
    assert v.state == FAIL and len(v.reasons) == 2
    assert "above max_error_rate 0.05" in v.reasons[0]
    assert "0.0600 is 0.0600 above the stable revision's 0.0000" in v.reasons[1]
    # the same rate as a stable revision that fails as often: within the absolute limit, passes
    assert judge(_s(100, 4), _s(100, 4), a).state == PASS
    v = judge(_s(100, 1), _s(100, 3), a)  # 3 % vs 1 %: under 5 %, but 2 points worse
    assert v.state == FAIL and v.reasons == (
        "error rate 0.0300 is 0.0200 above the stable revision's 0.0100 "
        "(max_error_rate_increase 0.01)",
    )


def test_latency_percentiles_compared_as_ratios_above_a_tolerance() -> None:
    a = Analysis(min_requests=10, max_latency_ratio=(("p50", 1.5), ("p95", 2.0), ("p99", 3.0)),
                 latency_tolerance_ms=5.0)  # fmt: skip
    stable = _s(100, 0, 10, 20, 30)
    assert judge(stable, _s(100, 0, 14.9, 39.9, 89.9), a).state == PASS
    v = judge(stable, _s(100, 0, 16, 20, 95), a)
    assert v.state == FAIL
    assert [r.split()[0] for r in v.reasons] == ["p50", "p99"]
    # slower by more than the ratio but by less than the tolerance: noise, not a failure
    fast = _s(100, 0, 0.2, 0.4, 0.6)
    assert judge(fast, _s(100, 0, 1.0, 2.0, 3.0), a).state == PASS
    # too few stable answers to compare latencies with: only the error rate is judged
    assert judge(_s(5, 0, 1, 1, 1), _s(100, 0, 90, 90, 90), a).state == PASS


def test_plans_parse_with_defaults_and_name_every_bad_field() -> None:
    plan = parse_canary({"steps": [10, 100], "analysis": {"max_latency_ratio": {"p99": 2}}})
    assert plan.steps == (10, 100) and plan.dwell_s == 60.0 and plan.auto_promote
    assert dict(plan.analysis.max_latency_ratio) == {"p50": 1.5, "p95": 2.0, "p99": 2.0}
    assert parse_canary(None) == parse_canary({})
    assert parse_canary({"auto_promote": False}).auto_promote is False
    bad = [
        ([], "canary"),
        ({"steps": "5,25"}, "canary.steps"),
        ({"steps": [5, 5]}, "canary.steps[1]"),
        ({"steps": [101]}, "canary.steps[0]"),
        ({"steps": [True]}, "canary.steps[0]"),
        ({"steps": list(range(1, 23))}, "canary.steps"),
        ({"interval_s": 0}, "canary.interval_s"),
        ({"analysis": []}, "canary.analysis"),
        ({"analysis": {"window": 5}}, "canary.analysis.window"),
        ({"analysis": {"window_s": 0}}, "canary.analysis.window_s"),
        (
            {"analysis": {"max_error_rate_increase": -0.1}},
            "canary.analysis.max_error_rate_increase",
        ),
        ({"analysis": {"min_requests": 2.5}}, "canary.analysis.min_requests"),
        ({"analysis": {"max_latency_ratio": 2}}, "canary.analysis.max_latency_ratio"),
        ({"analysis": {"latency_tolerance_ms": -1}}, "canary.analysis.latency_tolerance_ms"),
    ]
    for raw, field in bad:
        with pytest.raises(InvalidField) as e:
            parse_canary(raw)
        assert e.value.param == field, (raw, e.value)
