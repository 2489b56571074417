"""The control plane end to end over real HTTP: users, keys, models, uploads, deployments,
the data plane obeying ownership, audit, and a restart keeping everything — on SQLite and on
PostgreSQL."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN
from tests.integration.platform import Platform, iris_skops


@pytest.fixture(params=["sqlite", "postgres"])
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    p = Platform(tmp_path / "data", url).start()
    try:
        yield p
    finally:
        p.stop()


def test_lifecycle_owner_access_and_restart(platform: Platform) -> None:
    http = platform.http
    me = http.get("/api/v1/auth/me", headers=ADMIN).json()
    assert me["role"] == "admin" and me["via"] == "key"

    alice = platform.user("alice")
    bob = platform.user("bobby")
    doc = {"name": "alice-iris", "framework": "sklearn", "task_type": "classification",
           "tags": ["iris"]}  # fmt: skip
    r = http.post("/api/v1/models", headers=alice, json=doc)
    assert r.status_code == 201, r.text
    assert r.json()["visibility"] == "private"

    artifact, sample = iris_skops()
    r = platform.upload(alice, "alice-iris", artifact, {"sample_input": sample}, "weird.name")
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["status"] == "ready" and v["version"] == 1 and v["format"] == "skops"
    assert v["sha256"] == hashlib.sha256(artifact).hexdigest() and v["size_bytes"] == len(artifact)
    assert [i["name"] for i in v["inputs"]] == ["input"]
    assert v["sample_output"]["outputs"][0]["name"] == "predict"

    # bob and anonymous callers cannot tell the private model exists
    for who in (bob, {}):
        assert http.get("/api/v1/models/alice-iris", headers=who).status_code == 404
        assert "alice-iris" not in [m["name"] for m in http.get("/api/v1/models",
                                                                 headers=who).json()]  # fmt: skip

    r = http.post("/api/v1/deployments", headers=alice,
                  json={"model": "alice-iris", "config": {"min_replicas": 1}})  # fmt: skip
    assert r.status_code == 201, r.text
    dep = platform.wait_deployment(alice, r.json()["id"])
    assert dep["status"] == "ready", dep
    assert dep["observed_generation"] == dep["generation"] == 1

    infer = "/v2/models/alice-iris/infer"
    assert http.post(infer, headers=alice, json=sample).status_code == 200
    assert http.post(infer, headers=ADMIN, json=sample).status_code == 200
    for who in (bob, {}):
        r = http.post(infer, headers=who, json=sample)
        assert r.status_code == 404 and "unknown model" in r.json()["error"]
        assert http.get("/v2/models/alice-iris", headers=who).status_code == 404
    assert "alice-iris" not in http.get("/v2/models").json()["models"]

    test = http.post(f"/api/v1/deployments/{dep['id']}/test", headers=alice).json()
    assert test["passed"] is True, test

    # an infer-only key infers but cannot manage; revoked, it stops at once
    r = http.post("/api/v1/keys", headers=alice, json={"name": "ci", "scopes": ["infer"]})
    assert r.status_code == 201, r.text
    key = r.json()
    assert key["key"].startswith(key["prefix"] + "_")
    kh = {"Authorization": f"Bearer {key['key']}"}
    assert http.post(infer, headers=kh, json=sample).status_code == 200
    assert http.post("/api/v1/models", headers=kh, json={"name": "x-1"}).status_code == 403
    assert all("key" not in k for k in http.get("/api/v1/keys", headers=alice).json())
    assert http.delete(f"/api/v1/keys/{key['id']}", headers=bob).status_code == 404
    assert http.delete(f"/api/v1/keys/{key['id']}", headers=alice).status_code == 200
    r = http.post(infer, headers=kh, json=sample)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    # audit: admins read it, members may not
    assert http.get("/api/v1/audit", headers=alice).status_code == 403
    actions = [e["action"] for e in http.get("/api/v1/audit", headers=ADMIN).json()]
    for action in ("model.create", "version.create", "deployment.create", "key.create",
                   "key.revoke"):  # fmt: skip
        assert action in actions

    # restart: models, versions, deployments and keys survive; the deployment serves again
    platform.stop()
    platform.start()
    http = platform.http
    login = {"username": "alice", "password": "correct horse battery"}
    token = http.post("/api/v1/auth/login", json=login).json()["access_token"]
    alice = {"Authorization": f"Bearer {token}"}
    assert (
        http.get("/api/v1/models/alice-iris/versions/1", headers=alice).json()["status"] == "ready"
    )
    dep = platform.wait_deployment(alice, dep["id"])
    assert dep["status"] == "ready"
    assert http.post(infer, headers=alice, json=sample).status_code == 200
    assert http.post(infer, headers=kh, json=sample).status_code == 401
    assert len(http.get("/api/v1/keys", headers=alice).json()) == 1

    # deleting the deployment unloads the model
    assert http.delete(f"/api/v1/deployments/{dep['id']}", headers=alice).status_code == 204
    for _ in range(100):
        if http.post(infer, headers=alice, json=sample).status_code == 404:
            break

        time.sleep(0.05)
    assert http.post(infer, headers=alice, json=sample).status_code == 404


class _Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_unsafe_and_bad_uploads(platform: Platform, tmp_path: Path) -> None:
    http = platform.http
    carol = platform.user("carol")
    assert http.post("/api/v1/models", headers=carol, json={"name": "carol-m"}).status_code == 201
    canary = tmp_path / "canary"
    r = platform.upload(carol, "carol-m", pickle.dumps(_Canary(str(canary))), filename="m.onnx")
    assert r.status_code == 422, r.text
    assert "trusted" in r.json()["error"]
    assert not canary.exists()
    versions = http.get("/api/v1/models/carol-m/versions", headers=carol).json()
    assert versions[0]["status"] == "failed" and "trusted" in versions[0]["reason"]

    r = platform.upload(carol, "carol-m", b"definitely not a model" * 10)
    assert r.status_code == 422 and "format" in r.json()["error"]

    # a sample that does not fit the model: the version is still good, the sample is not kept
    artifact, _ = iris_skops()
    bad = {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = platform.upload(carol, "carol-m", artifact, {"sample_input": bad})
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["status"] == "ready" and v["sample_input"] is None
    assert v["reason"].startswith("sample_input:") and "'nope'" in v["reason"]
    assert "carol-m" in v["reason"] and "probe" not in v["reason"]

    # another member cannot upload into carol's model (and learns nothing)
    dave = platform.user("dave1")
    r = platform.upload(dave, "carol-m", b"x" * 100)
    assert r.status_code == 404
    assert http.post("/api/v1/models", headers={}, json={"name": "anon"}).status_code == 401
    assert _staged(platform) == []


def test_upload_over_the_cap_leaves_nothing(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data", registry={"max_upload_bytes": 4096}).start()
    try:
        eve = p.user("eve01")
        assert p.http.post("/api/v1/models", headers=eve, json={"name": "eve-m"}).status_code == 201
        r = p.upload(eve, "eve-m", b"\0" * 100_000)
        assert r.status_code == 413, r.text
        assert "upload limit" in r.json()["error"]
        assert p.http.get("/api/v1/models/eve-m/versions", headers=eve).json() == []
        assert _staged(p) == []

        # no Content-Length (chunked): the cap stops the stream itself
        def body() -> Iterator[bytes]:
            for _ in range(50):
                yield b"\1" * 1000

        r = p.http.post("/api/v1/models/eve-m/versions", content=body(),
                        headers={**eve, "content-type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 413, r.text
        assert p.http.get("/api/v1/models/eve-m/versions", headers=eve).json() == []
        assert _staged(p) == []
    finally:
        p.stop()


def _staged(p: Platform) -> list[Path]:
    staging = p.data_dir / "staging"
    return list(staging.iterdir()) if staging.exists() else []


def test_system_models_updates_and_login_throttle(tmp_path: Path, example_repo: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "simple", repo / "simple")
    p = Platform(tmp_path / "data", model_repository=repo).start()
    try:
        http = p.http
        # repository models are public system models, read-only here
        listed = {m["name"]: m for m in http.get("/api/v1/models").json()}
        assert listed["simple"]["system"] is True and listed["simple"]["visibility"] == "public"
        gina = p.user("gina1")
        assert http.post("/api/v1/models", headers=gina, json={"name": "simple"}).status_code == 409
        r = http.patch("/api/v1/models/simple", headers=gina, json={"description": "mine"})
        assert r.status_code == 403
        r = http.post("/api/v1/models", headers=gina, json={"name": "../etc"})
        assert r.status_code == 400 and "name" in r.json()["error"]

        # a new version swaps in through a deployment update
        assert http.post("/api/v1/models", headers=gina, json={"name": "g"}).status_code == 201
        artifact, sample = iris_skops()
        assert p.upload(gina, "g", artifact, {"sample_input": sample}).status_code == 201
        dep = http.post("/api/v1/deployments", headers=gina, json={"model": "g"}).json()
        assert p.wait_deployment(gina, dep["id"])["version"] == 1
        r = http.post("/api/v1/deployments", headers=gina, json={"model": "g"})
        assert r.status_code == 409 and dep["id"] in r.json()["error"]
        assert p.upload(gina, "g", artifact).status_code == 201
        r = http.patch(f"/api/v1/deployments/{dep['id']}", headers=gina, json={"version": 2})
        assert r.status_code == 200 and r.json()["generation"] == 2
        d = p.wait_deployment(gina, dep["id"])
        assert d["status"] == "ready" and d["observed_generation"] == 2
        assert http.get("/v2/models/g", headers=gina).json()["versions"] == ["2"]
        r = http.patch(f"/api/v1/deployments/{dep['id']}", headers=gina, json={"version": 7})
        assert r.status_code == 404 and "no version 7" in r.json()["error"]
        r = http.delete("/api/v1/models/g/versions/2", headers=gina)
        assert r.status_code == 409 and "deployed" in r.json()["error"]
        r = http.patch(f"/api/v1/deployments/{dep['id']}", headers=gina,
                       json={"config": {"batching": {"max_batch_size": 4}}})  # fmt: skip
        assert r.status_code == 200
        assert p.wait_deployment(gina, dep["id"])["status"] == "ready"
        assert http.get("/v2/models/g/config", headers=gina).json()["max_batch_size"] == 4

        # login attempts are throttled per username
        codes = [http.post("/api/v1/auth/login", json={"username": "gina1",
                                                       "password": "wrong password"}).status_code
                 for _ in range(11)]  # fmt: skip
        assert codes[:9] == [401] * 9 and codes[9:] == [429, 429]  # the good login counted too
    finally:
        p.stop()


def test_deployment_scales_to_zero_and_back(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data").start()
    try:
        http = p.http
        hal = p.user("hal01")
        assert http.post("/api/v1/models", headers=hal, json={"name": "z"}).status_code == 201
        artifact, sample = iris_skops()
        assert p.upload(hal, "z", artifact).status_code == 201
        cfg = {"min_replicas": 0, "max_replicas": 2, "scale_to_zero_after_s": 1}
        dep = http.post("/api/v1/deployments", headers=hal, json={"model": "z", "config": cfg})
        assert p.wait_deployment(hal, dep.json()["id"])["status"] == "ready"

        def replicas() -> int:
            index = http.post("/v2/repository/index", headers=hal, json={}).json()
            return int(next(m for m in index if m["name"] == "z")["replicas"]["total"])

        assert replicas() == 1
        deadline = time.monotonic() + 20
        while replicas() != 0:
            assert time.monotonic() < deadline, "never scaled to zero"
            time.sleep(0.1)
        r = http.post("/v2/models/z/infer", headers=hal, json=sample)  # cold start
        assert r.status_code == 200, r.text
        assert replicas() == 1
    finally:
        p.stop()
