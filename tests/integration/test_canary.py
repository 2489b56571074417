"""Canary rollouts with automated analysis, on a real server with real worker processes and
clients calling all the while: a canary that fails on purpose (its model raises) is rolled back
by itself at its first step, and callers see errors only from the canary's share; a healthy
canary goes through every step and is promoted; a canary held at a fixed share (`inferd deploy
--canary`) waits for a promotion by hand. Every decision is an event with its figures and an
audit entry. Bad plans are refused naming the field, and nothing changes."""

from __future__ import annotations

import io
import textwrap
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from inferd.cli.main import cli
from inferd.client import Client
from tests.conftest import ADMIN
from tests.integration.platform import Platform

HEALTHY = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            return {"Y": inputs["X"] * 2}
    """
)
FAILING = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            raise RuntimeError("this version fails on purpose")
    """
)
META = {
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1]}],
}
BODY = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
#: Quick checks, so that the test runs in seconds.
ANALYSIS = {"min_requests": 10, "window_s": 30, "max_error_rate": 0.05}


def _zip(code: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.py", code)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Carol (trusted: her models are Python code) owns `cn`: version 1 healthy, 2 failing,
    3 and 4 healthy; deployed on version 1."""
    p = Platform(tmp_path_factory.mktemp("canary") / "data").start()
    carol = p.user("carol")
    me = p.http.get("/api/v1/auth/me", headers=carol).json()
    r = p.http.patch(f"/api/v1/users/{me['id']}", headers=ADMIN, json={"trusted": True})
    assert r.status_code == 200, r.text
    r = p.http.post("/api/v1/models", headers=carol, json={"name": "cn", "visibility": "public"})
    assert r.status_code == 201, r.text
    for code in (HEALTHY, FAILING, HEALTHY, HEALTHY):
        r = p.upload(carol, "cn", _zip(code), META, "code.zip")
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    dep = p.deploy(carol, {"model": "cn", "version": 1})
    try:
        yield {"p": p, "carol": carol, "dep": dep}
    finally:
        p.stop()


class Load:
    """Two client threads calling `cn` until stopped: each answer's status and version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                r = http.post("/v2/models/cn/infer", json=BODY)
                version = r.json().get("model_version") if r.status_code == 200 else None
                self.answers.append((r.status_code, version))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def _dep(world: dict[str, Any]) -> dict[str, Any]:
    p, dep = world["p"], world["dep"]
    return p.http.get(f"/api/v1/deployments/{dep['id']}", headers=world["carol"]).json()


def _wait_phase(world: dict[str, Any], phases: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        d = _dep(world)
        if d["rollout"]["phase"] in phases and d["status"] == "ready":
            return d
        assert time.monotonic() < deadline, (d["traffic"], d["rollout"])
        time.sleep(0.1)


def _rollout(world: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    p, dep = world["p"], world["dep"]
    return p.http.post(f"/api/v1/deployments/{dep['id']}/rollout", headers=world["carol"],
                       json=body, timeout=120)  # fmt: skip


def _audit(world: dict[str, Any], action: str) -> list[dict[str, Any]]:
    r = world["p"].http.get("/api/v1/audit", headers=ADMIN, params={"limit": 500})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["action"] == action]


def test_bad_canary_plans_are_refused_naming_the_field(world: dict[str, Any]) -> None:
    before = _dep(world)
    cases = [
        ({"steps": [50, 20]}, "canary.steps[1]"),
        ({"steps": [0, 50]}, "canary.steps[0]"),
        ({"steps": []}, "canary.steps"),
        ({"dwell_s": -1}, "canary.dwell_s"),
        ({"analysis": {"max_error_rate": 2}}, "canary.analysis.max_error_rate"),
        ({"analysis": {"min_requests": 0}}, "canary.analysis.min_requests"),
        ({"analysis": {"max_latency_ratio": {"p75": 2}}}, "canary.analysis.max_latency_ratio.p75"),
        ({"analysis": {"max_latency_ratio": {"p99": 0.5}}},
         "canary.analysis.max_latency_ratio.p99"),
        ({"pace": 1}, "canary.pace"),
        ({"auto_promote": "yes"}, "canary.auto_promote"),
    ]  # fmt: skip
    for plan, field in cases:
        r = _rollout(world, {"strategy": "canary", "version": 3, "canary": plan})
        assert r.status_code == 400, (plan, r.text)
        assert r.json()["error"].startswith(f"{field}:"), (plan, r.text)
    r = _rollout(world, {"strategy": "canary", "version": 1})
    assert r.status_code == 400 and r.json()["error"].startswith("version:"), r.text
    r = _rollout(world, {"strategy": "blue_green", "version": 3, "canary": {"steps": [5]}})
    assert r.status_code == 400 and r.json()["error"].startswith("canary:"), r.text
    r = world["p"].http.post(f"/api/v1/deployments/{world['dep']['id']}/promote",
                             headers=world["carol"])  # fmt: skip
    assert r.status_code == 409 and "no canary in progress" in r.json()["error"], r.text
    after = _dep(world)
    assert after["generation"] == before["generation"] and after["traffic"] == before["traffic"]


def test_a_failing_canary_is_rolled_back_by_itself(world: dict[str, Any]) -> None:
    p = world["p"]
    plan = {"steps": [10, 50, 100], "dwell_s": 2, "interval_s": 0.1, "analysis": ANALYSIS}
    with Load(p.server.url) as load:
        time.sleep(0.3)
        r = _rollout(world, {"strategy": "canary", "version": 2, "canary": plan})
        assert r.status_code == 200, r.text
        started = len(load.answers)
        ro = r.json()["rollout"]
        assert (ro["strategy"], ro["phase"], ro["weight"]) == ("canary", "progressing", 10), ro
        d = _wait_phase(world, {"rolled_back", "promoted", "failed"})
        stopped = len(load.answers)
        time.sleep(0.3)
    ro = d["rollout"]
    assert ro["phase"] == "rolled_back", ro
    assert d["traffic"] == [{"version": 1, "weight": 100}] and d["version"] == 1, d
    events = [e["event"] for e in ro["events"]]
    assert events == ["started", "ready", "step", "rolled_back"], events
    last = ro["events"][-1]
    assert last["verdict"] == "fail" and "error rate" in last["reasons"][0], last
    assert last["canary"]["requests"] >= 10 and last["canary"]["error_rate"] > 0.05, last
    assert last["stable"]["errors"] == 0, last
    # callers saw errors only from the canary's 10 % share, and only while it had one
    during = load.answers[started:stopped]
    failed = sum(1 for code, _ in during if code != 200)
    assert 0 < failed <= 0.25 * len(during), (failed, len(during))
    assert all(code in (200, 500) for code, _ in load.answers), Counter(load.answers)
    after = load.answers[stopped + 20 :]
    assert after and all(a == (200, "1") for a in after), Counter(after)
    entries = _audit(world, "deployment.canary.rollback")
    assert entries and entries[0]["detail"]["canary"]["error_rate"] > 0.05, entries


def test_a_healthy_canary_goes_through_every_step_and_is_promoted(world: dict[str, Any]) -> None:
    p = world["p"]
    plan = {"steps": [20, 50, 100], "dwell_s": 0.5, "interval_s": 0.1,
            "analysis": ANALYSIS | {"latency_tolerance_ms": 200}}  # fmt: skip
    with Load(p.server.url) as load:
        time.sleep(0.3)
        r = _rollout(world, {"strategy": "canary", "version": 3, "canary": plan})
        assert r.status_code == 200, r.text
        d = _wait_phase(world, {"rolled_back", "promoted", "failed"})
        time.sleep(0.3)
    ro = d["rollout"]
    assert ro["phase"] == "promoted", ro
    assert d["traffic"] == [{"version": 3, "weight": 100}] and d["version"] == 3, d
    steps = [(e["event"], e.get("weight")) for e in ro["events"] if e["event"].startswith("step")]
    assert steps == [("step", 20), ("step_passed", 20), ("step", 50), ("step_passed", 50),
                     ("step", 100), ("step_passed", 100)], steps  # fmt: skip
    assert ro["events"][-1]["event"] == "promoted"
    assert all(code == 200 for code, _ in load.answers), Counter(load.answers)
    assert {v for _, v in load.answers} <= {"1", "3"} and load.answers[-1][1] == "3"
    assert _audit(world, "deployment.canary.promote"), "the promotion is in the audit log"
    passed = _audit(world, "deployment.canary.step")
    assert len(passed) >= 3 and all(e["detail"]["verdict"] == "pass" for e in passed), passed


def test_a_fixed_canary_waits_for_a_promotion_by_hand(world: dict[str, Any]) -> None:
    """`inferd deploy cn --version 4 --canary 25`, then `inferd rollout status` and
    `inferd rollout promote`: the CLI through the SDK against the real server."""
    p = world["p"]
    r = p.http.post("/api/v1/keys", headers=world["carol"],
                    json={"name": "cli", "scopes": ["infer", "manage"]})  # fmt: skip
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    env = {"INFERD_URL": p.server.url, "INFERD_API_KEY": key}
    runner = CliRunner()
    res = runner.invoke(cli, ["deploy", "cn", "--version", "4", "--canary", "25"], env=env)
    assert res.exit_code == 0, res.output
    assert "canary 3 → 4 at 25%: progressing" in res.output, res.output
    seen = Counter(
        p.http.post("/v2/models/cn/infer", json=BODY).json()["model_version"] for _ in range(400)
    )
    assert set(seen) == {"3", "4"} and 60 <= seen["4"] <= 140, seen  # 25 % of 400, ± 10 points
    deadline = time.monotonic() + 30
    while "awaiting_promotion" not in [e["event"] for e in _dep(world)["rollout"]["events"]]:
        assert time.monotonic() < deadline, _dep(world)
        time.sleep(0.1)
    res = runner.invoke(cli, ["rollout", "status", "cn"], env=env)
    assert res.exit_code == 0 and "awaiting_promotion" in res.output, res.output
    assert _dep(world)["rollout"]["phase"] == "progressing"  # held, not promoted by itself
    with Client(p.server.url, api_key=key) as sdk:
        promoted = sdk.promote("cn")
    assert promoted["rollout"]["phase"] == "promoted", promoted
    d = p.wait_deployment(world["carol"], world["dep"]["id"])
    assert d["traffic"] == [{"version": 4, "weight": 100}], d
    res = runner.invoke(cli, ["rollout", "rollback", "cn"], env=env)
    assert res.exit_code != 0 and "no switched rollout" in res.output, res.output


def test_a_canary_whose_split_is_changed_by_hand_stops_where_it_is(world: dict[str, Any]) -> None:
    p, carol, dep = world["p"], world["carol"], world["dep"]
    served = _dep(world)["version"]
    plan = {"steps": [10, 100], "dwell_s": 60, "interval_s": 0.05, "analysis": ANALYSIS}
    r = _rollout(world, {"strategy": "canary", "version": 3, "canary": plan})
    assert r.status_code == 200 and r.json()["rollout"]["weight"] == 10, r.text
    r = p.http.patch(f"/api/v1/deployments/{dep['id']}", headers=carol,
                     json={"traffic": {str(served): 50, "3": 50}})  # fmt: skip
    assert r.status_code == 200, r.text
    d = _wait_phase(world, {"interrupted", "rolled_back", "promoted", "failed"})
    assert d["rollout"]["phase"] == "interrupted", d["rollout"]
    assert d["rollout"]["events"][-1]["event"] == "interrupted"
    weights = {t["version"]: t["weight"] for t in d["traffic"]}
    assert weights == {served: 50, 3: 50}, d["traffic"]  # left as the operator set it
