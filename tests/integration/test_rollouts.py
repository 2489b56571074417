"""Blue-green rollouts on a real server with real worker processes: the new version comes up
beside the served one, its sample test passes, all traffic moves to it at once while clients
keep calling (no request fails, each answer from one revision, never the new one before the
switch); the previous version stays warm, so a rollback is instant (its worker was never
replaced); after the warm time the previous version is unloaded. Refusals name their reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inferd.client import Client
from tests.integration.platform import Platform, iris_skops


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Alice's public model `bg` with three ready versions, deployed on version 1."""
    p = Platform(tmp_path_factory.mktemp("rollouts") / "data").start()
    alice = p.user("alice")
    artifact, sample = iris_skops()
    p.public_model(alice, "bg", artifact, {"sample_input": sample}, versions=3)
    dep = p.deploy(alice, {"model": "bg", "version": 1})
    try:
        yield {"p": p, "alice": alice, "sample": sample, "dep": dep}
    finally:
        p.stop()


def _post(world: dict[str, Any], what: str, body: dict[str, Any] | None = None) -> httpx.Response:
    p, dep = world["p"], world["dep"]
    return p.http.post(f"/api/v1/deployments/{dep['id']}/{what}", headers=world["alice"],
                       json=body, timeout=120)  # fmt: skip


def _pid(world: dict[str, Any], version: str) -> int | None:
    return world["p"].server.engine.version("bg", version).scheduler.live()[0].replica.pid


def test_bad_rollouts_are_refused_with_the_reason(world: dict[str, Any]) -> None:
    r = _post(world, "rollout", {"version": 1})
    assert r.status_code == 400 and r.json()["error"].startswith("version:"), r.text
    r = _post(world, "rollout", {"version": 9})
    assert r.status_code in (400, 404), r.text
    r = _post(world, "rollout", {"version": 2, "keep_previous_s": -1})
    assert r.status_code in (400, 422) and "keep_previous_s" in r.text, r.text
    r = _post(world, "rollback")
    assert r.status_code == 409 and "no switched rollout" in r.json()["error"], r.text
    dep = world["p"].http.get(f"/api/v1/deployments/{world['dep']['id']}",
                              headers=world["alice"]).json()  # fmt: skip
    assert dep["version"] == 1 and dep["traffic"] == [{"version": 1, "weight": 100}], dep


def test_blue_green_switches_at_once_under_load_and_rolls_back_instantly(
    world: dict[str, Any],
) -> None:
    p, sample = world["p"], world["sample"]
    seen: list[tuple[int, float, str]] = []  # (client, answered at, version)
    failures: list[str] = []
    stop = threading.Event()

    def load(client: int) -> None:
        with httpx.Client(base_url=p.server.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/v2/models/bg/infer", json=sample)
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                seen.append((client, time.monotonic(), r.json()["model_version"]))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        old_pid = _pid(world, "1")
        r = _post(world, "rollout", {"version": 2, "test": True, "keep_previous_s": 60})
        switched_at = time.monotonic()
        assert r.status_code == 200, r.text
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    dep = r.json()
    assert dep["version"] == 2 and dep["traffic"] == [
        {"version": 1, "weight": 0},
        {"version": 2, "weight": 100},
    ], dep
    ro = dep["rollout"]
    assert (ro["strategy"], ro["from"], ro["to"], ro["phase"]) == ("blue_green", 1, 2, "switched")
    assert [e["event"] for e in ro["events"]] == ["started", "ready", "test_passed", "switched"]
    # one revision per answer: each client (its requests one after another) is answered by
    # version 1 until the switch and by version 2 after it, never back (across the two clients
    # the order of answers is not the order of requests: one sent just before the switch may
    # end after one sent just after it)
    assert {v for _, _, v in seen} == {"1", "2"}
    for client in (0, 1):
        versions = [v for c, _, v in seen if c == client]
        first_new = versions.index("2") if "2" in versions else len(versions)
        assert set(versions[:first_new]) == {"1"} and set(versions[first_new:]) == {"2"}
    assert all(t >= switched_at - 5 for _, t, v in seen if v == "2")
    assert old_pid == _pid(world, "1")  # the previous version stayed warm
    # rollback: the traffic goes back at once, to the same worker (nothing reloaded)
    token = world["alice"]["Authorization"].removeprefix("Bearer ")
    with Client(p.server.url, token=token) as sdk:
        back = sdk.rollback("bg")
    assert back["rollout"]["phase"] == "rolled_back", back
    answers = {p.http.post("/v2/models/bg/infer", json=sample).json()["model_version"]
               for _ in range(10)}  # fmt: skip
    assert answers == {"1"} and _pid(world, "1") == old_pid
    d = p.wait_deployment(world["alice"], world["dep"]["id"])
    assert d["version"] == 1 and d["traffic"] == [{"version": 1, "weight": 100}], d


def test_after_its_warm_time_the_previous_version_is_unloaded(world: dict[str, Any]) -> None:
    p, sample = world["p"], world["sample"]
    r = _post(world, "rollout", {"version": 3, "keep_previous_s": 0.5})
    assert r.status_code == 200 and r.json()["version"] == 3, r.text
    deadline = time.monotonic() + 30
    while True:
        d = p.http.get(f"/api/v1/deployments/{world['dep']['id']}", headers=world["alice"]).json()
        if d["rollout"]["phase"] == "done" and d["status"] == "ready":
            break
        assert time.monotonic() < deadline, d
        time.sleep(0.1)
    assert d["traffic"] == [{"version": 3, "weight": 100}], d
    assert [e["event"] for e in d["rollout"]["events"]][-1] == "previous_unloaded"
    r = p.http.post("/v2/models/bg/versions/1/infer", json=sample)
    assert r.status_code == 404, r.text
    r = _post(world, "rollback")  # nothing warm to go back to
    assert r.status_code == 409, r.text


def test_a_deployment_turns_the_response_cache_on(world: dict[str, Any]) -> None:
    """`config.response_cache`: identical requests are answered from the server's cache (the
    statistics count the hit; the model ran once)."""
    p, sample, dep = world["p"], world["sample"], world["dep"]
    url = f"/api/v1/deployments/{dep['id']}"
    r = p.http.patch(url, headers=world["alice"], json={"config": {"response_cache": "yes"}})
    assert r.status_code == 400 and r.json()["error"].startswith("config.response_cache"), r.text
    r = p.http.patch(url, headers=world["alice"], json={"config": {"response_cache": True}})
    assert r.status_code == 200 and r.json()["config"]["response_cache"] is True, r.text
    d = p.wait_deployment(world["alice"], dep["id"])
    assert d["status"] == "ready", d
    answers = [p.http.post("/v2/models/bg/infer", json=sample).json() for _ in range(3)]
    assert answers[0]["outputs"] == answers[1]["outputs"] == answers[2]["outputs"]
    stats = p.http.get(f"/v2/models/bg/versions/{d['version']}/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["cache_hit"]["count"] == 2, stats
    assert stats["inference_stats"]["cache_miss"]["count"] == 1, stats
    assert stats["execution_count"] == 1, stats
