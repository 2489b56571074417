"""A deployment's routing policy on a real server with real worker processes and real clients:
header rules send a request to a named revision on every protocol; when the revision that took
a request fails (here: its worker is stopped, so requests time out), the fallback model answers
and the caller sees no error; the revision's circuit opens (answers come from the fallback at
once), probes after its cool-down and closes once the worker runs again. Bad policies are
refused naming the field, and nothing changes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inferd.client import Client
from inferd.client.errors import InferdClientError
from tests.integration.platform import Platform, iris_skops

HEADER = "x-inferd-model-version"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Alice's public models `main` (two versions) and `backup` (one), both deployed; the same
    classifier in each."""
    p = Platform(tmp_path_factory.mktemp("routing") / "data").start()
    alice = p.user("alice")
    artifact, sample = iris_skops()
    deployments = {}
    for name, versions in (("main", 2), ("backup", 1)):
        r = p.http.post("/api/v1/models", headers=alice,
                        json={"name": name, "visibility": "public"})  # fmt: skip
        assert r.status_code == 201, r.text
        for _ in range(versions):
            r = p.upload(alice, name, artifact, {"sample_input": sample})
            assert r.status_code == 201 and r.json()["status"] == "ready", r.text
        body: dict[str, Any] = {"model": name}
        if versions == 2:
            body["traffic"] = {"1": 100, "2": 0}
        r = p.http.post("/api/v1/deployments", headers=alice, json=body)
        assert r.status_code == 201, r.text
        d = p.wait_deployment(alice, r.json()["id"])
        assert d["status"] == "ready" and d["routing"] == {}, d
        deployments[name] = d
    try:
        yield {"p": p, "alice": alice, "sample": sample, "deployments": deployments}
    finally:
        p.stop()


def _route(world: dict[str, Any], name: str, routing: Any) -> Any:
    """PATCH the routing policy; once accepted, wait until the data plane applies it."""
    p, alice = world["p"], world["alice"]
    dep = world["deployments"][name]
    r = p.http.patch(f"/api/v1/deployments/{dep['id']}", headers=alice,
                     json={"routing": routing})  # fmt: skip
    if r.status_code == 200:
        d = p.wait_deployment(alice, dep["id"])
        assert d["status"] == "ready" and d["observed_generation"] == d["generation"], d
    return r


def _generation(world: dict[str, Any], name: str) -> int:
    p, dep = world["p"], world["deployments"][name]
    return int(p.http.get(f"/api/v1/deployments/{dep['id']}", headers=world["alice"])
               .json()["generation"])  # fmt: skip


def test_bad_policies_are_refused_naming_the_field_and_change_nothing(
    world: dict[str, Any],
) -> None:
    before = _generation(world, "main")
    cases = [
        ({"rules": [{"header": "x-tenant", "value": "a", "version": 3}]},
         "routing.rules[0].version"),
        ({"rules": [{"header": "x-tenant", "value": "a"}]}, "routing.rules[0].version"),
        ({"fallbacks": [{"model": "nowhere"}]}, "routing.fallbacks[0].model"),
        ({"fallbacks": [{"model": "backup", "version": 9}]}, "routing.fallbacks[0].version"),
        ({"fallbacks": [{"model": "main"}]}, "routing.fallbacks[0].version"),
        ({"circuit_breaker": {"failures": 0}}, "routing.circuit_breaker.failures"),
        ({"circuit_breaker": {"error_ratio": 2}}, "routing.circuit_breaker.error_ratio"),
        ({"fallback": []}, "routing.fallback"),
        ([], "routing"),
    ]  # fmt: skip
    for routing, field in cases:
        r = _route(world, "main", routing)
        assert r.status_code in (400, 422), (routing, r.text)
        assert r.json()["error"].startswith(field), (field, r.text)
    assert _generation(world, "main") == before
    # a chain of fallbacks that leads back is a cycle
    r = _route(world, "backup", {"fallbacks": [{"model": "main"}]})
    assert r.status_code == 200, r.text
    r = _route(world, "main", {"fallbacks": [{"model": "backup"}]})
    assert r.status_code == 400 and r.json()["error"].startswith("routing.fallbacks:"), r.text
    assert "cycle" in r.json()["error"]
    # removed again, through the SDK this time
    token = world["alice"]["Authorization"].removeprefix("Bearer ")
    with Client(world["p"].server.url, token=token) as sdk:
        assert sdk.set_routing("backup", {})["routing"] == {}
        with pytest.raises(InferdClientError) as err:
            sdk.set_routing("nothing-deployed", {})
        assert err.value.status == 404
    assert _generation(world, "main") == before


def test_a_header_rule_sends_requests_to_its_revision_on_every_protocol(
    world: dict[str, Any],
) -> None:
    p, sample = world["p"], world["sample"]
    r = _route(world, "main", {"rules": [{"header": "X-Tenant", "value": "acme", "version": 2}]})
    assert r.status_code == 200, r.text
    assert r.json()["routing"] == {"rules": [{"header": "x-tenant", "value": "acme",
                                              "version": 2}]}  # fmt: skip
    for tenant, want in (("acme", "2"), ("other", "1"), (None, "1")):
        headers = {"x-tenant": tenant} if tenant else {}
        for _ in range(5):
            r = p.http.post("/v2/models/main/infer", json=sample, headers=headers)
            assert r.status_code == 200 and r.json()["model_version"] == want, r.text
            assert r.headers[HEADER] == want
    instances = np.asarray(sample["inputs"][0]["data"], dtype=float).reshape(2, 4).tolist()
    r = p.http.post("/v1/models/main:predict", json={"instances": instances},
                    headers={"x-tenant": "acme"})  # fmt: skip
    assert r.status_code == 200 and r.headers[HEADER] == "2", r.text
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{p.server.grpc_port}")
    try:
        x = grpcclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(np.asarray(instances, dtype=np.float32))
        routed = client.infer("main", [x], headers={"x-tenant": "acme"}).get_response()
        plain = client.infer("main", [x]).get_response()
    finally:
        client.close()
    assert (routed.model_version, plain.model_version) == ("2", "1")
    # an explicit version still wins over a rule
    r = p.http.post("/v2/models/main/versions/1/infer", json=sample, headers={"x-tenant": "acme"})
    assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
    assert _route(world, "main", {}).status_code == 200


def _metric(p: Platform, line_start: str) -> float | None:
    for line in p.http.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_failing_revision_falls_back_and_its_circuit_opens_probes_and_closes(
    world: dict[str, Any],
) -> None:
    p, sample = world["p"], world["sample"]
    r = _route(world, "main", {"fallbacks": [{"model": "backup"}],
                               "circuit_breaker": {"failures": 2, "open_s": 1.5}})  # fmt: skip
    assert r.status_code == 200, r.text
    state = 'inferd_circuit_breaker_state{model="main",version="1"}'
    pid = p.server.engine.version("main", "1").scheduler.live()[0].replica.pid
    assert pid is not None
    slow = {"x-request-timeout-ms": "300"}
    answered: list[tuple[str, float]] = []
    os.kill(pid, signal.SIGSTOP)  # the primary cannot answer (kept under its liveness timeout)
    try:
        for _ in range(6):
            t0 = time.monotonic()
            r = p.http.post("/v2/models/main/infer", json=sample, headers=slow)
            assert r.status_code == 200, r.text  # no error reaches the caller
            answered.append((r.json()["model_name"], time.monotonic() - t0))
            assert r.headers[HEADER] == r.json()["model_version"]
        assert _metric(p, state) == 1.0  # open
    finally:
        os.kill(pid, signal.SIGCONT)
    assert [name for name, _ in answered] == ["backup"] * 6
    # two timed out on the primary first; once open, the fallback answers at once
    assert all(t >= 0.3 for _, t in answered[:2]), answered
    assert all(t < 0.3 for _, t in answered[2:]), answered
    assert _metric(p, 'inferd_fallback_requests_total{fallback_model="backup",'
                      'fallback_version="1",model="main",version="1"}') == 6.0  # fmt: skip
    # after the cool-down a probe goes to the primary, which runs again: the circuit closes
    time.sleep(1.6)
    r = p.http.post("/v2/models/main/infer", json=sample)
    assert r.status_code == 200 and r.json()["model_name"] == "main", r.text
    assert _metric(p, state) == 0.0
    for _ in range(3):
        r = p.http.post("/v2/models/main/infer", json=sample)
        assert r.status_code == 200 and r.json()["model_name"] == "main", r.text
    # a caller's mistake is answered as it is: no fallback, and it does not open the circuit
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    for _ in range(3):
        r = p.http.post("/v2/models/main/infer", json=bad)
        assert r.status_code == 400, r.text
    assert _metric(p, state) == 0.0
    assert _route(world, "main", {}).status_code == 200


def _deployment(world: dict[str, Any], name: str) -> dict[str, Any]:
    p, dep = world["p"], world["deployments"][name]
    r = p.http.get(f"/api/v1/deployments/{dep['id']}", headers=world["alice"])
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_shadow_gets_copies_that_are_compared_and_a_stuck_one_never_delays_the_answer(
    world: dict[str, Any],
) -> None:
    """Revision 2 (weight 0) shadows revision 1 at 100 %: it never answers a caller, its
    answers are compared (the same classifier: all agree), and while its worker is stopped the
    callers' answers come as fast as ever; copies beyond `max_in_flight` are dropped."""
    p, sample = world["p"], world["sample"]
    r = _route(world, "main", {"shadow": {"version": 2, "max_in_flight": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["routing"]["shadow"] == {"version": 2, "percent": 100.0, "max_in_flight": 2}
    for _ in range(20):
        r = p.http.post("/v2/models/main/infer", json=sample)
        assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        # one copy at a time here (the shadow runs at background priority: on a busy machine
        # it may lag, and copies beyond max_in_flight would be dropped)
        deadline = time.monotonic() + 10
        while (shadow := _deployment(world, "main").get("shadow", {})).get("in_flight") != 0:
            assert time.monotonic() < deadline, shadow
            time.sleep(0.02)
    assert shadow["target"] == "main:2"
    assert (shadow["sent"], shadow["agreed"], shadow["differed"], shadow["failed"]) == (
        20,
        20,
        0,
        0,
    )
    assert shadow["agreement"] == 1.0 and shadow["max_abs_diff"] == 0.0
    agreed = ('inferd_shadow_requests_total{model="main",outcome="agreed",shadow_model="main",'
              'shadow_version="2",version="1"}')  # fmt: skip
    assert _metric(p, agreed) == 20.0

    pid = p.server.engine.version("main", "2").scheduler.live()[0].replica.pid
    assert pid is not None
    took = []
    os.kill(pid, signal.SIGSTOP)  # the shadow hangs (kept under its liveness timeout)
    try:
        for _ in range(30):
            t0 = time.monotonic()
            r = p.http.post("/v2/models/main/infer", json=sample)
            took.append(time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        stuck = _deployment(world, "main")["shadow"]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stuck["in_flight"] == 2 and stuck["dropped"] == 28, stuck
    assert max(took) < 0.5, took  # nobody waited for the shadow
    dropped = agreed.replace('outcome="agreed"', 'outcome="dropped"')
    assert _metric(p, dropped) == 28.0
    deadline = time.monotonic() + 10
    while _deployment(world, "main")["shadow"]["in_flight"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _deployment(world, "main")["shadow"]["agreed"] == 22  # the two it held came back
    # a revision that only shadows runs at background CPU priority; given traffic, it gets the
    # normal priority back
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert os.getpriority(os.PRIO_PROCESS, p.server.engine.version("main", "1").scheduler
                          .live()[0].replica.pid) == 0  # fmt: skip
    dep = world["deployments"]["main"]
    for split in ({"1": 50, "2": 50}, {"1": 100, "2": 0}):
        r = p.http.patch(f"/api/v1/deployments/{dep['id']}", headers=world["alice"],
                         json={"traffic": split})  # fmt: skip
        assert r.status_code == 200, r.text
        assert p.wait_deployment(world["alice"], dep["id"])["status"] == "ready"
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
    assert _route(world, "main", {}).status_code == 200
    assert "shadow" not in _deployment(world, "main")
