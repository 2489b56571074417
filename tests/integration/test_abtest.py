"""An A/B test on a real server with real worker processes: a 50/50 deployment whose routing
policy runs a test sticky by `x-user-id`; every user stays on one arm; feedback attaches an
outcome to a request the deployment answered (once), and the report gives each arm's counts and
rate and the two-proportion z-test between them. Refusals name their reason."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.platform import Platform, iris_skops


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    p = Platform(tmp_path_factory.mktemp("abtest") / "data").start()
    alice = p.user("alice")
    artifact, sample = iris_skops()
    p.public_model(alice, "ab", artifact, {"sample_input": sample}, versions=2)
    dep = p.deploy(alice, {"model": "ab", "traffic": {"1": 50, "2": 50}})
    try:
        yield {"p": p, "alice": alice, "sample": sample, "dep": dep}
    finally:
        p.stop()


def test_sticky_arms_feedback_and_a_significance_report(world: dict[str, Any]) -> None:
    p, alice, sample, dep = world["p"], world["alice"], world["sample"], world["dep"]
    base = f"/api/v1/deployments/{dep['id']}"
    r = p.http.get(f"{base}/abtest", headers=alice)
    assert r.status_code == 409 and "no A/B test" in r.json()["error"], r.text
    r = p.http.patch(base, headers=alice, json={"routing": {"ab": {"sticky": "x-user-id"}}})
    assert r.status_code == 200, r.text
    assert p.wait_deployment(alice, dep["id"])["status"] == "ready"

    arms: dict[str, set[str]] = defaultdict(set)
    served: list[tuple[str, str]] = []
    for user in range(40):
        for call in range(4):
            rid = f"u{user}-{call}"
            r = p.http.post("/v2/models/ab/infer", json={"id": rid, **sample},
                            headers={"x-user-id": f"user-{user}"})  # fmt: skip
            assert r.status_code == 200 and r.json()["id"] == rid, r.text
            version = r.json()["model_version"]
            arms[f"user-{user}"].add(version)
            served.append((rid, version))
    assert all(len(v) == 1 for v in arms.values()), arms  # each user stays on one arm
    per_arm = [sum(v == {a} for v in arms.values()) for a in ("1", "2")]
    assert min(per_arm) >= 8, per_arm  # both arms get users (40 users, 50/50)

    # outcomes: arm 2 converts far more often than arm 1
    for i, (rid, version) in enumerate(served):
        reward = (1 if i % 10 < 8 else 0) if version == "2" else (1 if i % 10 < 3 else 0)
        r = p.http.post(f"{base}/feedback", headers=alice,
                        json={"request_id": rid, "reward": reward})  # fmt: skip
        assert r.status_code == 200 and r.json()["version"] == int(version), r.text
    r = p.http.post(f"{base}/feedback", headers=alice,
                    json={"request_id": served[0][0], "reward": 1})  # fmt: skip
    assert r.status_code == 404, r.text  # once per request
    r = p.http.post(f"{base}/feedback", headers=alice, json={"request_id": "nope", "reward": 1})
    assert r.status_code == 404, r.text
    r = p.http.post(f"{base}/feedback", headers=alice, json={"request_id": "x", "reward": "a"})
    assert r.status_code in (400, 422) and "reward" in r.text, r.text

    rep = p.http.get(f"{base}/abtest", headers=alice).json()
    assert rep["control"] == 1 and [a["version"] for a in rep["arms"]] == [1, 2]
    counts = {str(a["version"]): a for a in rep["arms"]}
    for version in ("1", "2"):
        n = sum(v == version for _, v in served)
        assert counts[version]["served"] == n and counts[version]["feedback"] == n
    assert counts["2"]["rate"] > 0.7 and counts["1"]["rate"] < 0.4, counts
    (cmp,) = rep["comparisons"]
    assert cmp["test"] == "two_proportion_z" and cmp["treatment"] == 2
    assert cmp["p_value"] < 0.001 and cmp["ci"][0] > 0, cmp
