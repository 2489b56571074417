"""The routing policy (core.routing): parsing refuses what is out of range naming the field; header
rules pick a revision; each revision's circuit breaker opens, probes and closes on a fake
clock (times are passed in)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inferd.core.errors import InvalidField
from inferd.core.routing import (
    CLOSED,
    HALF_OPEN,
    NO_ROUTING,
    OPEN,
    ABTest,
    BreakerPolicy,
    CircuitBreaker,
    Fallback,
    Routes,
    Rule,
    Shadow,
    ShadowStats,
    compare,
    parse_routing,
)
from inferd.core.tensors import Tensor


def test_a_policy_parses_and_reads_back_the_same() -> None:
    raw = {"rules": [{"header": "X-Tenant", "value": "acme", "version": 2}],
           "fallbacks": [{"model": "backup"}, {"version": 1}, {"model": "other", "version": 3}],
           "circuit_breaker": {"failures": 3, "error_ratio": 0.5, "window_s": 10,
                               "min_requests": 4, "open_s": 2.5, "probes": 2}}  # fmt: skip
    policy = parse_routing(raw)
    assert policy.rules == (Rule("x-tenant", "acme", 2),)  # header names compare in lower case
    assert policy.fallbacks == (Fallback("backup"), Fallback(None, 1), Fallback("other", 3))
    assert policy.breaker == BreakerPolicy(3, 0.5, 10.0, 4, 2.5, 2)
    assert parse_routing(policy.doc()) == policy
    assert parse_routing(None) == NO_ROUTING and parse_routing({}) == NO_ROUTING
    assert not NO_ROUTING and policy
    # defaults fill what is left out
    assert parse_routing({"circuit_breaker": {}}).breaker == BreakerPolicy()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "routing"),
        ({"rulez": []}, "routing.rulez"),
        ({"rules": {}}, "routing.rules"),
        ({"rules": [{"header": "x", "value": "a"}]}, "routing.rules[0].version"),
        ({"rules": [{"header": "", "value": "a", "version": 1}]}, "routing.rules[0].header"),
        ({"rules": [{"header": "x", "value": 3, "version": 1}]}, "routing.rules[0].value"),
        ({"rules": [{"header": "x", "value": "a", "version": 0}]}, "routing.rules[0].version"),
        ({"rules": [{"header": "x", "value": "a", "version": 1, "w": 1}]}, "routing.rules[0].w"),
        ({"fallbacks": [{}]}, "routing.fallbacks[0]"),
        ({"fallbacks": [{"model": ""}]}, "routing.fallbacks[0].model"),
        ({"fallbacks": [{"version": True}]}, "routing.fallbacks[0].version"),
        ({"fallbacks": [{"model": "b"}, {"model": "b"}]}, "routing.fallbacks[1]"),
        ({"fallbacks": [{"model": "b"}] * 9}, "routing.fallbacks"),
        ({"circuit_breaker": []}, "routing.circuit_breaker"),
        ({"circuit_breaker": {"failures": 0}}, "routing.circuit_breaker.failures"),
        ({"circuit_breaker": {"failures": 1.5}}, "routing.circuit_breaker.failures"),
        ({"circuit_breaker": {"error_ratio": 0}}, "routing.circuit_breaker.error_ratio"),
        ({"circuit_breaker": {"error_ratio": 1.5}}, "routing.circuit_breaker.error_ratio"),
        ({"circuit_breaker": {"open_s": -1}}, "routing.circuit_breaker.open_s"),
        ({"circuit_breaker": {"window_s": "10"}}, "routing.circuit_breaker.window_s"),
        ({"circuit_breaker": {"probes": 0}}, "routing.circuit_breaker.probes"),
        ({"circuit_breaker": {"fails": 1}}, "routing.circuit_breaker.fails"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidField) as err:
        parse_routing(raw)
    assert err.value.param == field, err.value.message


def test_the_first_matching_rule_picks_the_revision() -> None:
    rules = [{"header": "x-tenant", "value": "acme", "version": 2},
             {"header": "x-inferd-revision", "value": "3", "version": 3},
             {"header": "x-tenant", "value": "acme", "version": 4}]  # fmt: skip
    policy = parse_routing({"rules": rules})
    headers = {"x-tenant": "acme", "x-inferd-revision": "3"}
    assert policy.route(headers.get) == "2"
    assert policy.route({"x-inferd-revision": "3"}.get) == "3"
    assert policy.route({"x-tenant": "ACME"}.get) is None  # values compare exactly
    assert policy.route({}.get) is None


def test_the_circuit_opens_after_failures_in_a_row_and_a_success_resets_the_run() -> None:
    b = CircuitBreaker(BreakerPolicy(failures=3, open_s=10))
    for t in (1.0, 2.0):
        assert b.allow(t)
        b.record(True, t)
    b.record(False, 3.0)  # a success in between: the run starts again
    for t in (4.0, 5.0):
        b.record(True, t)
    assert b.state == CLOSED
    b.record(True, 6.0)
    assert b.state == OPEN
    assert not b.allow(6.5) and not b.allow(15.9)  # refused at once while open
    assert b.retry_after(15.0) == pytest.approx(1.0)


def test_after_the_cool_down_one_probe_goes_through_and_decides() -> None:
    b = CircuitBreaker(BreakerPolicy(failures=1, open_s=5, probes=1))
    b.record(True, 0.0)
    assert b.state == OPEN
    assert b.allow(5.0) and b.state == HALF_OPEN  # the probe
    assert not b.allow(5.1)  # one probe at a time
    b.record(True, 5.2)  # it failed: open again, for another cool-down
    assert b.state == OPEN and not b.allow(10.0)
    assert b.allow(10.3)
    b.record(False, 10.4)  # it succeeded: closed
    assert b.state == CLOSED and b.allow(10.5) and b.allow(10.5)
    # a late answer from before the circuit opened changes nothing while it is open
    b.record(True, 11.0)
    assert b.state == OPEN
    b.record(True, 11.5)
    assert b.state == OPEN


def test_the_error_ratio_counts_the_window_only() -> None:
    b = CircuitBreaker(BreakerPolicy(failures=100, error_ratio=0.5, window_s=10, min_requests=4))
    for t, failed in ((0.0, True), (1.0, False), (2.0, True)):
        b.record(failed, t)
    assert b.state == CLOSED  # 2 of 3: not enough requests yet
    b.record(False, 20.0)  # the first three left the window
    b.record(True, 21.0)
    b.record(False, 22.0)
    b.record(False, 23.0)
    assert b.state == CLOSED  # 1 of 4 in the window
    b.record(True, 24.0)
    assert b.state == CLOSED  # 2 of 5 = 0.4
    b.record(True, 25.0)
    assert b.state == OPEN  # 3 of 6 = 0.5


def test_routes_keep_a_breaker_per_revision_until_the_policy_changes() -> None:
    routes = Routes()
    assert routes.breaker("m", "1") is None
    policy = parse_routing({"circuit_breaker": {"failures": 1}})
    routes.set("m", policy)
    one = routes.breaker("m", "1")
    assert one is not None and routes.breaker("m", "1") is one
    assert routes.breaker("m", "2") is not one
    one.record(True, 0.0)
    routes.set("m", policy)  # the same policy again (a weight change): the state stays
    assert routes.breaker("m", "1") is one and one.state == OPEN
    routes.set("m", parse_routing({"circuit_breaker": {"failures": 2}}))
    fresh = routes.breaker("m", "1")
    assert fresh is not one and fresh is not None and fresh.state == CLOSED
    routes.set("m", NO_ROUTING)  # no policy left: nothing is kept for the model
    assert "m" not in routes.policies and routes.breaker("m", "1") is None
    routes.set("m", policy)
    routes.forget("m")
    assert routes.policies == {} and routes.breakers == {}


def test_a_shadow_parses_with_its_defaults_and_bad_ones_name_the_field() -> None:
    policy = parse_routing({"shadow": {"version": 2}})
    assert policy.shadow == Shadow(None, 2, 100.0, 16) and policy
    assert parse_routing(policy.doc()) == policy
    other = parse_routing({"shadow": {"model": "m2", "percent": 12.5, "max_in_flight": 2}})
    assert other.shadow == Shadow("m2", None, 12.5, 2)
    for raw, field in (({"shadow": {}}, "routing.shadow"),
                       ({"shadow": {"version": 2, "percent": 101}}, "routing.shadow.percent"),
                       ({"shadow": {"version": 2, "max_in_flight": 0}},
                        "routing.shadow.max_in_flight"),
                       ({"shadow": {"version": 2, "copy": 1}}, "routing.shadow.copy"),
                       ({"shadow": 2}, "routing.shadow")):  # fmt: skip
        with pytest.raises(InvalidField) as err:
            parse_routing(raw)
        assert err.value.param == field, err.value.message


def test_answers_are_compared_output_by_output() -> None:
    def answer(**outputs: np.ndarray) -> list[Tensor]:
        return [Tensor(n, "FP32", a) for n, a in outputs.items()]

    probs = np.array([[0.2, 0.8]], dtype=np.float32)
    label = np.array([1])
    assert compare(answer(p=probs, y=label), answer(p=probs.copy(), y=label)) == (True, 0.0)
    agreed, diff = compare(answer(p=probs, y=label), answer(p=probs + 0.25, y=label))
    assert not agreed and diff == pytest.approx(0.25)
    assert compare(answer(y=label), answer(y=np.array([0])))[0] is False
    assert compare(answer(y=label), answer(z=label))[0] is False  # another output
    assert compare(answer(y=label), answer(y=np.array([1, 1])))[0] is False  # another shape
    texts = np.array([b"a", b"b"], dtype=object)
    assert compare(answer(t=texts), answer(t=texts.copy())) == (True, None)
    stats = ShadowStats("m:2")
    stats.record(True, 0.0)
    stats.record(False, 0.5)
    doc = stats.doc()
    assert (doc["agreed"], doc["differed"], doc["agreement"]) == (1, 1, 0.5)
    assert (doc["max_abs_diff"], doc["mean_abs_diff"]) == (0.5, 0.25)


def test_an_ab_test_parses_and_bad_ones_name_the_field() -> None:
    policy = parse_routing({"ab": {"sticky": "X-User-Id"}})
    assert policy.ab == ABTest("x-user-id", 100_000) and parse_routing(policy.doc()) == policy
    assert parse_routing({"ab": {}}).ab == ABTest(None, 100_000)
    for raw, field in (({"ab": []}, "routing.ab"), ({"ab": {"sticky": ""}}, "routing.ab.sticky"),
                       ({"ab": {"remember": 0}}, "routing.ab.remember"),
                       ({"ab": {"arms": 2}}, "routing.ab.arms")):  # fmt: skip
        with pytest.raises(InvalidField) as err:
            parse_routing(raw)
        assert err.value.param == field, err.value.message


def test_a_probe_that_ends_without_a_verdict_gives_its_place_back() -> None:
    """A caller's bad request or departure says nothing of the revision: the half-open circuit
    neither closes nor opens, and lets the next probe through."""
    b = CircuitBreaker(BreakerPolicy(failures=1, open_s=1, probes=1))
    b.record(True, 0.0)
    assert b.allow(1.5) and not b.allow(1.6)
    b.release()
    assert b.state == HALF_OPEN and b.allow(1.7)
    b.record(False, 1.8)
    assert b.state == CLOSED
    b.release()  # closed: nothing to give back, nothing changes
    assert b.state == CLOSED and b.allow(2.0)
