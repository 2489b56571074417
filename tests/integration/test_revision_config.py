"""Each revision of a deployment may run with its own runtime config (replicas, batching,
resources): a real server with real worker processes. A weight change keeps each revision's
config and reloads nothing; `"config": null` sends a revision back to the deployment's config;
a canary brought up with its own config keeps it when promoted. Bad configs are refused naming
the revision's field, and nothing changes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inferd.client import Client
from tests.integration.platform import Platform, iris_skops

TWO = {"min_replicas": 2, "max_replicas": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Alice's public model `rc` with three ready versions, deployed 50/50 on versions 1 and 2,
    version 1 with two replicas of its own."""
    p = Platform(tmp_path_factory.mktemp("revcfg") / "data").start()
    alice = p.user("alice")
    artifact, sample = iris_skops()
    p.public_model(alice, "rc", artifact, {"sample_input": sample}, versions=3)
    traffic = [{"version": 1, "weight": 50, "config": TWO}, {"version": 2, "weight": 50}]
    dep = p.deploy(alice, {"model": "rc", "traffic": traffic})
    try:
        yield {"p": p, "alice": alice, "sample": sample, "dep": dep}
    finally:
        p.stop()


def _pids(world: dict[str, Any], version: str) -> set[int]:
    slots = world["p"].server.engine.version("rc", version).scheduler.live()
    return {s.replica.pid for s in slots}


def _patch(world: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    p, dep = world["p"], world["dep"]
    r = p.http.patch(f"/api/v1/deployments/{dep['id']}", headers=world["alice"], json=body)
    if r.status_code == 200:
        d = p.wait_deployment(world["alice"], dep["id"])
        assert d["status"] == "ready", d
    return r


def _dep(world: dict[str, Any]) -> dict[str, Any]:
    p, dep = world["p"], world["dep"]
    return p.http.get(f"/api/v1/deployments/{dep['id']}", headers=world["alice"]).json()


def test_each_revision_runs_with_its_own_config(world: dict[str, Any]) -> None:
    assert len(_pids(world, "1")) == 2 and len(_pids(world, "2")) == 1
    traffic = _dep(world)["traffic"]
    assert [r["version"] for r in traffic] == [1, 2]
    assert traffic[0]["config"]["min_replicas"] == 2 and "config" not in traffic[1], traffic


def test_bad_revision_configs_are_refused_naming_the_field(world: dict[str, Any]) -> None:
    before = _dep(world)
    cases = [
        ([{"version": 1, "weight": 50, "config": {"min_replicas": 99}},
          {"version": 2, "weight": 50}], "traffic[0].config.min_replicas"),
        ([{"version": 1, "weight": 50}, {"version": 2, "weight": 50, "config": {"speed": 1}}],
         "traffic[1].config.speed"),
        ([{"version": 1, "weight": 50}, {"version": 2, "weight": 50, "config": [1]}],
         "traffic[1].config"),
        ([{"version": 1, "weight": 50},
          {"version": 2, "weight": 50, "config": {"batching": {"max_batch_size": -1}}}],
         "traffic[1].config.batching.max_batch_size"),
        ([{"version": 1, "weight": 100, "config": TWO}], "traffic[0].config"),
    ]  # fmt: skip
    for traffic, field in cases:
        r = _patch(world, {"traffic": traffic})
        assert r.status_code == 400, (traffic, r.text)
        assert r.json()["error"].startswith(f"{field}:"), (field, r.text)
    after = _dep(world)
    assert after["generation"] == before["generation"] and after["traffic"] == before["traffic"]


def test_a_weight_change_keeps_each_revision_config_and_reloads_nothing(
    world: dict[str, Any],
) -> None:
    pids = {v: _pids(world, v) for v in ("1", "2")}
    r = _patch(world, {"traffic": {"1": 20, "2": 80}})  # the short form names no config
    assert r.status_code == 200, r.text
    assert {v: _pids(world, v) for v in ("1", "2")} == pids
    assert _dep(world)["traffic"][0] == {"version": 1, "weight": 20, "config": r.json()["traffic"]
                                         [0]["config"]}  # fmt: skip
    # `"config": null`: back to the deployment's config (one replica)
    r = _patch(world, {"traffic": [{"version": 1, "weight": 20, "config": None},
                                   {"version": 2, "weight": 80}]})  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(_pids(world, "1")) == 1 and _pids(world, "2") == pids["2"]
    assert all("config" not in r for r in _dep(world)["traffic"])
    # the SDK gives a revision its own config too
    token = world["alice"]["Authorization"].removeprefix("Bearer ")
    with Client(world["p"].server.url, token=token) as sdk:
        d = sdk.set_traffic("rc", {1: 50, 2: 50}, configs={2: TWO})
    assert d["status"] == "ready" and d["traffic"][1]["config"]["max_replicas"] == 2, d
    assert len(_pids(world, "2")) == 2


def test_a_canary_keeps_its_own_config_when_promoted(world: dict[str, Any]) -> None:
    p, sample = world["p"], world["sample"]
    r = _patch(world, {"version": 1})  # a canary starts from one served version
    assert r.status_code == 200 and len(_pids(world, "1")) == 1, r.text
    plan = {"steps": [50], "dwell_s": 0, "interval_s": 0.05, "analysis": {"min_requests": 5}}
    r = p.http.post(f"/api/v1/deployments/{world['dep']['id']}/rollout", headers=world["alice"],
                    json={"strategy": "canary", "version": 3, "canary": plan, "config": TWO},
                    timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["traffic"][1] == {"version": 3, "weight": 50, "config": r.json()["traffic"][1]
                                      ["config"]} and len(_pids(world, "3")) == 2  # fmt: skip
    deadline = time.monotonic() + 60
    while _dep(world)["rollout"]["phase"] == "progressing":
        assert p.http.post("/v2/models/rc/infer", json=sample).status_code == 200
        assert time.monotonic() < deadline, _dep(world)
    d = p.wait_deployment(world["alice"], world["dep"]["id"])
    assert d["rollout"]["phase"] == "promoted", d["rollout"]
    assert d["version"] == 3 and d["config"]["min_replicas"] == 2, d
    assert len(_pids(world, "3")) == 2
    r = p.http.post(f"/api/v1/deployments/{world['dep']['id']}/rollout", headers=world["alice"],
                    json={"strategy": "blue_green", "version": 1, "config": TWO})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"].startswith("config:"), r.text
