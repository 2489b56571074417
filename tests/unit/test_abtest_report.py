"""A/B tests: sticky draws are stable and even; the state remembers which arm answered each
request and takes one feedback per request; the report's significance tests (statsmodels /
scipy) match cases computed here by hand from the textbook formulas."""

from __future__ import annotations

import math

import pytest

from inferd.control.abtest import build_report, compare
from inferd.core.routing import ABState, sticky_draw


def test_a_sticky_draw_is_the_same_for_a_key_and_even_over_keys() -> None:
    assert sticky_draw("user-7") == sticky_draw("user-7") != sticky_draw("user-8")
    draws = [sticky_draw(f"user-{i}") for i in range(20_000)]
    assert all(0 <= u < 1 for u in draws)
    assert abs(sum(u < 0.1 for u in draws) / len(draws) - 0.1) < 0.01
    assert abs(sum(u < 0.5 for u in draws) / len(draws) - 0.5) < 0.015


def test_the_state_takes_one_feedback_per_remembered_request() -> None:
    state = ABState(remember=3)
    for i, version in enumerate(["1", "2", "1", "2"]):
        state.answered(f"r{i}", version)
    assert state.feedback("r0", 1.0) is None  # the oldest was forgotten (remember=3)
    assert state.feedback("r1", 0.5) == "2"
    assert state.feedback("r1", 0.5) is None  # once
    assert state.feedback("r2", 1.0) == "1"
    assert (state.arms["1"].served, state.arms["2"].served) == (2, 2)
    assert (state.arms["1"].rewards, state.arms["2"].rewards) == ([1.0], [0.5])


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_rates_use_the_two_proportion_z_test() -> None:
    control = [1.0] * 45 + [0.0] * 55  # 45 %
    treatment = [1.0] * 60 + [0.0] * 40  # 60 %
    got = compare(control, treatment)
    pooled = 105 / 200
    z = (0.60 - 0.45) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))
    half = 1.959964 * math.sqrt(0.6 * 0.4 / 100 + 0.45 * 0.55 / 100)
    assert got["test"] == "two_proportion_z"
    assert got["statistic"] == pytest.approx(z, rel=1e-9)  # 2.1240
    assert got["p_value"] == pytest.approx(2 * (1 - _phi(z)), rel=1e-6)  # 0.0337
    assert got["difference"] == pytest.approx(0.15)
    assert got["ci"] == pytest.approx([0.15 - half, 0.15 + half], rel=1e-5)


def _t_two_sided(t: float, df: float) -> float:
    """P(|T| >= t) for Student's t with `df` degrees of freedom, by Simpson's rule."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    n, width = 20_000, abs(t)
    h = width / n
    total = sum((1 if i in (0, n) else 4 if i % 2 else 2)
                * c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1))  # fmt: skip
    return 1 - 2 * total * h / 3


def test_means_use_welchs_t_test() -> None:
    control = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, variance 2.5
    treatment = [2.0, 4.0, 6.0, 8.0, 10.0]  # mean 6, variance 10
    got = compare(control, treatment)
    se2 = 2.5 / 5 + 10 / 5
    t = 3 / math.sqrt(se2)
    df = se2**2 / ((2.5 / 5) ** 2 / 4 + (10 / 5) ** 2 / 4)  # Welch-Satterthwaite: 5.88
    assert got["test"] == "welch_t"
    assert got["statistic"] == pytest.approx(t, rel=1e-9)  # 1.897
    assert got["p_value"] == pytest.approx(_t_two_sided(t, df), abs=1e-4)  # 0.107
    assert got["difference"] == pytest.approx(3.0)
    low, high = got["ci"]
    assert low < 0 < high and (low + high) / 2 == pytest.approx(3.0)


def test_a_report_lists_every_arm_and_compares_each_with_the_control() -> None:
    state = ABState(remember=100)
    for i in range(20):
        state.answered(f"a{i}", "1")
        state.answered(f"b{i}", "2")
    for i in range(20):
        state.feedback(f"a{i}", 1.0 if i < 5 else 0.0)
        state.feedback(f"b{i}", 1.0 if i < 15 else 0.0)
    rep = build_report(state, {"1": 50.0, "2": 50.0, "3": 0.0}, control="1")
    assert [a["version"] for a in rep["arms"]] == [1, 2, 3]
    one, two, three = rep["arms"]
    assert (one["served"], one["feedback"], one["rate"]) == (20, 20, 0.25)
    assert (two["served"], two["feedback"], two["rate"]) == (20, 20, 0.75)
    assert (three["served"], three["feedback"], three["mean"]) == (0, 0, None)
    (cmp,) = rep["comparisons"]
    assert (cmp["control"], cmp["treatment"], cmp["test"]) == (1, 2, "two_proportion_z")
    assert cmp["p_value"] < 0.01 and cmp["difference"] == pytest.approx(0.5)
    # too little feedback: nothing to test yet
    assert compare([1.0], [0.0, 1.0])["p_value"] is None
