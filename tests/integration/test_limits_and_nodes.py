"""Quotas over real HTTP (429 + Retry-After), trusted code uploads, and two nodes sharing one
PostgreSQL registry and one Redis: a deployment made through one is served by the other, and
rate limits are shared."""

from __future__ import annotations

import io
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN
from tests.integration.platform import Platform, iris_skops

SLOW_MODEL = textwrap.dedent(
    """
    import time

    class Model:
        def infer(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            return {"Y": inputs["X"] * 2}
    """
)
SLOW_META = {
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1]}],
}


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def _body(sleep: float = 0) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
            "parameters": {"sleep": sleep}}  # fmt: skip


def _user_id(p: Platform, headers: dict[str, str]) -> str:
    return str(p.http.get("/api/v1/auth/me", headers=headers).json()["id"])


def test_trusted_code_upload_and_user_limits(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data").start()
    try:
        http = p.http
        carol = p.user("carol")
        assert http.post("/api/v1/models", headers=carol, json={"name": "slow"}).status_code == 201
        archive = _zip({"model.py": SLOW_MODEL})
        r = p.upload(carol, "slow", archive, SLOW_META, "code.zip")
        assert r.status_code == 422 and "trusted" in r.json()["error"]

        uid = _user_id(p, carol)
        r = http.patch(f"/api/v1/users/{uid}", headers=ADMIN, json={"trusted": True})
        assert r.status_code == 200 and r.json()["trusted"] is True
        r = p.upload(carol, "slow", archive, SLOW_META, "code.zip")
        assert r.status_code == 201, r.text
        assert r.json()["format"] == "python"
        dep = http.post("/api/v1/deployments", headers=carol, json={"model": "slow"}).json()
        assert "id" in dep, dep
        assert p.wait_deployment(carol, dep["id"])["status"] == "ready"
        limits = {"concurrency_limit": 1, "rpm_limit": 5}
        assert http.patch(f"/api/v1/users/{uid}", headers=ADMIN, json=limits).status_code == 200

        # concurrency: one request in flight at a time for carol
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(http.post, "/v2/models/slow/infer", headers=carol, json=_body(1.0))
            time.sleep(0.3)
            fast = http.post("/v2/models/slow/infer", headers=carol, json=_body())
            assert slow.result().status_code == 200
        assert fast.status_code == 429 and int(fast.headers["retry-after"]) >= 1
        assert "concurrent" in fast.json()["error"]

        # requests per minute: 5 in all so far counts 2; 3 more pass, then 429
        codes = [http.post("/v2/models/slow/infer", headers=carol, json=_body()).status_code
                 for _ in range(4)]  # fmt: skip
        assert codes == [200, 200, 200, 429], codes
        r = http.post("/v2/models/slow/infer", headers=carol, json=_body())
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert http.get("/api/v1/models", headers=carol).status_code == 429  # management too
        # other callers are not affected
        assert http.post("/v2/models/slow/infer", headers=ADMIN, json=_body()).status_code == 200
    finally:
        p.stop()


def test_storage_quota(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data", limits={"storage_bytes": 1500}).start()
    try:
        dan = p.user("dan01")
        assert p.http.post("/api/v1/models", headers=dan, json={"name": "q"}).status_code == 201
        artifact, _ = iris_skops()
        assert len(artifact) > 1500
        r = p.upload(dan, "q", artifact)
        assert r.status_code == 429 and "storage quota" in r.json()["error"], r.text
        assert "retry-after" in r.headers
    finally:
        p.stop()


def test_two_nodes_share_registry_and_limits(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    # one database, one Redis, one artifact store (a shared volume here; S3 in production)
    common: dict[str, Any] = {"redis_url": redis_url, "redis_prefix": redis_prefix,
                              "auth": {"credential_cache_s": 0}}  # fmt: skip
    registry = {"reconcile_interval_s": 0.2, "artifact_store": str(tmp_path / "artifacts")}
    a = Platform(tmp_path / "a", postgres_url, registry=registry, **common).start()
    b = Platform(tmp_path / "b", postgres_url, registry=registry, **common).start()
    try:
        erin = a.user("erin1")
        # the JWT signing key is shared through the database: b accepts a's token
        assert b.http.get("/api/v1/auth/me", headers=erin).json()["username"] == "erin1"
        # a model uploaded and deployed through node a is served by node b too
        assert a.http.post("/api/v1/models", headers=erin, json={"name": "nb"}).status_code == 201
        artifact, sample = iris_skops()
        assert a.upload(erin, "nb", artifact, {"sample_input": sample}).status_code == 201
        dep = a.http.post("/api/v1/deployments", headers=erin, json={"model": "nb"}).json()
        assert a.wait_deployment(erin, dep["id"])["status"] == "ready"
        assert _eventually(lambda: b.http.post("/v2/models/nb/infer", headers=ADMIN,
                                               json=sample).status_code == 200)  # fmt: skip
        a.http.patch(f"/api/v1/users/{_user_id(a, erin)}", headers=ADMIN, json={"rpm_limit": 4})
        codes = []
        for node in (a, b, a, b, a):
            codes.append(node.http.get("/api/v1/auth/me", headers=erin).status_code)
        assert codes == [200, 200, 200, 200, 429], codes  # one shared window of 4 per minute
        # a deletion made through node a is applied by node b's reconciler
        assert a.http.delete(f"/api/v1/deployments/{dep['id']}", headers=ADMIN).status_code == 204
        assert _eventually(lambda: b.http.post("/v2/models/nb/infer", headers=ADMIN,
                                               json=sample).status_code == 404)  # fmt: skip
    finally:
        a.stop()
        b.stop()


def _eventually(check: Any, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False
