"""Where artifacts come from and go: S3 (a real S3-speaking server) and URL imports."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.platform import Platform, iris_skops
from tests.integration.test_artifacts_s3 import KEY, REGION, SECRET, bucket, moto_endpoint

__all__ = ["bucket", "moto_endpoint"]  # pytest fixtures used below


def _wait_version(p: Platform, headers: dict[str, str], name: str, v: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        doc = p.http.get(f"/api/v1/models/{name}/versions/{v}", headers=headers).json()
        if doc["status"] != "importing" or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def test_s3_artifact_store_round_trip(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    import boto3

    registry = {"artifact_store": f"s3://{bucket}/inferd", "s3_endpoint_url": moto_endpoint,
                "s3_access_key": KEY, "s3_secret_key": SECRET, "s3_region": REGION}  # fmt: skip
    data = tmp_path / "data"
    p = Platform(data, registry=dict(registry)).start()
    try:
        owner = p.user("s3user")
        assert p.http.post("/api/v1/models", headers=owner, json={"name": "s3m"}).status_code == 201
        artifact, sample = iris_skops()
        r = p.upload(owner, "s3m", artifact, {"sample_input": sample})
        assert r.status_code == 201, r.text
        dep = p.http.post("/api/v1/deployments", headers=owner, json={"model": "s3m"}).json()
        assert p.wait_deployment(owner, dep["id"])["status"] == "ready"
    finally:
        p.stop()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION,
                      aws_access_key_id=KEY, aws_secret_access_key=SECRET)  # fmt: skip
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="inferd/")["Contents"]
    assert len(objects) == 1 and objects[0]["Key"].endswith("/1/model.skops")
    body = s3.get_object(Bucket=bucket, Key=objects[0]["Key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == r.json()["sha256"]

    # a node with an empty local cache serves the deployment from the bucket
    shutil.rmtree(data / "cache")
    p = Platform(data, registry=dict(registry)).start()
    try:
        assert p.wait_deployment(owner, dep["id"])["status"] == "ready"
        r = p.http.post("/v2/models/s3m/infer", headers=owner, json=sample)
        assert r.status_code == 200, r.text
    finally:
        p.stop()


class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def file_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("Handler", (_Files,), {"files": files})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_url_import(tmp_path: Path, file_server: tuple[str, dict[str, bytes]]) -> None:
    base, files = file_server
    artifact, sample = iris_skops()
    files["/models/iris.skops"] = artifact
    p = Platform(tmp_path / "data", registry={"allow_private_urls": True}).start()
    try:
        owner = p.user("importer")
        assert (
            p.http.post("/api/v1/models", headers=owner, json={"name": "url-m"}).status_code == 201
        )
        doc = {"url": f"{base}/models/iris.skops", "sample_input": sample}
        r = p.http.post("/api/v1/models/url-m/versions/import", headers=owner, json=doc)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "importing"
        v = _wait_version(p, owner, "url-m", r.json()["version"])
        assert v["status"] == "ready", v
        assert v["sha256"] == hashlib.sha256(artifact).hexdigest()
        assert v["source"] == f"url:{base}/models/iris.skops"

        r = p.http.post("/api/v1/models/url-m/versions/import", headers=owner,
                        json={"url": f"{base}/missing"})  # fmt: skip
        v = _wait_version(p, owner, "url-m", r.json()["version"])
        assert v["status"] == "failed" and "404" in v["reason"]
    finally:
        p.stop()


def test_url_import_refuses_internal_addresses(
    tmp_path: Path, file_server: tuple[str, dict[str, bytes]]
) -> None:
    base, files = file_server
    files["/m"] = b"x" * 10
    p = Platform(tmp_path / "data").start()  # the default: SSRF guard on
    try:
        owner = p.user("importer")
        assert (
            p.http.post("/api/v1/models", headers=owner, json={"name": "url-m"}).status_code == 201
        )
        for url in (f"{base}/m", "http://169.254.169.254/latest/meta-data/",
                    f"http://localhost:{base.rsplit(':', 1)[1]}/m"):  # fmt: skip
            # refused at submission (the download re-checks every hop, for rebinding)
            r = p.http.post("/api/v1/models/url-m/versions/import", headers=owner,
                            json={"url": url})  # fmt: skip
            assert r.status_code == 400, r.text
            assert r.json()["error"].startswith("url:") and "not allowed" in r.json()["error"]
        for url in ("file:///etc/passwd", "http://no-such-host.invalid/m", "http://exa mple/m"):
            r = p.http.post("/api/v1/models/url-m/versions/import", headers=owner,
                            json={"url": url})  # fmt: skip
            assert r.status_code == 400 and r.json()["error"].startswith("url:"), r.text
        assert p.http.get("/api/v1/models/url-m/versions", headers=owner).json() == []
    finally:
        p.stop()
