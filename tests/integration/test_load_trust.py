"""A member cannot make the server run code by loosening a load-time check: the skops
`trusted_types` exploit through upload meta, URL import meta, deployment config and version PATCH
leaves no trace (a canary file never appears), for members and for trusted owners who did not have
an admin name the callable. Real server, real worker processes, real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN
from tests.evil_skops import exec_call, system_call
from tests.integration.platform import Platform, iris_skops


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    # loopback URLs allowed so that the URL-import path reaches the load, as a public URL would
    p = Platform(tmp_path / "data", registry={"allow_private_urls": True}).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def files() -> Iterator[dict[str, bytes]]:
    """A loopback file server: tests put bytes under a path, the server returns them."""
    served: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("content-length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    served["_base"] = f"http://127.0.0.1:{httpd.server_address[1]}".encode()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


def _trust(p: Platform, headers: dict[str, str]) -> None:
    me = p.http.get("/api/v1/auth/me", headers=headers).json()
    r = p.http.patch(f"/api/v1/users/{me['id']}", headers=ADMIN, json={"trusted": True})
    assert r.status_code == 200, r.text


def _model(p: Platform, headers: dict[str, str], name: str) -> None:
    assert p.http.post("/api/v1/models", headers=headers, json={"name": name}).status_code == 201


def test_member_upload_meta_cannot_trust_a_callable(platform: Platform, tmp_path: Path) -> None:
    mallory = platform.user("mallory")
    _model(platform, mallory, "m1")
    for build, name in ((system_call, "posix.system"), (exec_call, "builtins.exec")):
        canary = tmp_path / f"canary-{name}"
        meta = {"parameters": {"trusted_types": [name]}}
        r = platform.upload(mallory, "m1", build(canary), meta, filename="m.skops")
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith("parameters.trusted_types:"), r.text
        assert not canary.exists()
        # without the meta the file is refused by skops' own list, still before anything runs
        r = platform.upload(mallory, "m1", build(canary), filename="m.skops")
        assert r.status_code == 422 and name in r.json()["error"], r.text
        assert not canary.exists()
    # the refusal came before a version was stored: only the two plain attempts are recorded
    versions = platform.http.get("/api/v1/models/m1/versions", headers=mallory).json()
    assert [v["status"] for v in versions] == ["failed", "failed"]
    # the runtime override to a code-running runtime is refused the same way
    r = platform.upload(mallory, "m1", iris_skops()[0], {"runtime": "python"})
    assert r.status_code == 422 and r.json()["error"].startswith("runtime:"), r.text


def test_url_import_meta_is_refused_at_submission(
    platform: Platform, tmp_path: Path, files: dict[str, bytes]
) -> None:
    mallory = platform.user("mallory")
    _model(platform, mallory, "m2")
    canary = tmp_path / "canary"
    files["/evil.skops"] = system_call(canary)
    url = files["_base"].decode() + "/evil.skops"
    body = {"url": url, "parameters": {"trusted_types": ["posix.system"]}}
    r = platform.http.post("/api/v1/models/m2/versions/import", headers=mallory, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("parameters.trusted_types:")
    assert platform.http.get("/api/v1/models/m2/versions", headers=mallory).json() == []
    assert not canary.exists()


def test_trusted_owner_does_not_get_callables_without_an_admin(
    platform: Platform, tmp_path: Path, files: dict[str, bytes]
) -> None:
    trent = platform.user("trent")
    _trust(platform, trent)
    _model(platform, trent, "t1")
    canary = tmp_path / "canary"
    # no meta: `trusted` admits data classes the file names, not posix.system
    r = platform.upload(trent, "t1", system_call(canary), filename="m.skops")
    assert r.status_code == 422 and "posix.system" in r.json()["error"], r.text
    assert not canary.exists()
    # naming it is for admins only: upload, URL import
    meta = {"parameters": {"trusted_types": ["posix.system"]}}
    r = platform.upload(trent, "t1", system_call(canary), meta, filename="m.skops")
    assert r.status_code == 422 and "only an admin" in r.json()["error"], r.text
    files["/e.skops"] = exec_call(canary)
    body = {"url": files["_base"].decode() + "/e.skops",
            "parameters": {"trusted_types": ["builtins.exec"]}}  # fmt: skip
    r = platform.http.post("/api/v1/models/t1/versions/import", headers=trent, json=body)
    assert r.status_code == 422 and "only an admin" in r.json()["error"], r.text
    assert not canary.exists()


def test_deployment_config_and_version_patch(platform: Platform, tmp_path: Path) -> None:
    http = platform.http
    mallory = platform.user("mallory")
    _model(platform, mallory, "m3")
    artifact, _ = iris_skops()
    assert platform.upload(mallory, "m3", artifact).status_code == 201
    bad = {"parameters": {"trusted_types": ["posix.system"]}}
    r = http.post("/api/v1/deployments", headers=mallory,
                  json={"model": "m3", "config": bad})  # fmt: skip
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("config.parameters.trusted_types:")
    r = http.post("/api/v1/deployments", headers=mallory,
                  json={"model": "m3", "config": {"runtime": "python"}})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"].startswith("config.runtime:"), r.text
    r = http.post("/api/v1/deployments", headers=mallory, json={"model": "m3"})
    assert r.status_code == 201, r.text
    dep = r.json()["id"]
    r = http.patch(f"/api/v1/deployments/{dep}", headers=mallory, json={"config": bad})
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("config.parameters.trusted_types:")
    # a version's parameters cannot be changed at all
    r = http.patch("/api/v1/models/m3/versions/1", headers=mallory, json=bad)
    assert r.status_code == 400 and r.json()["error"].startswith("parameters:"), r.text
    # even an admin cannot loosen a member's model: the owner must be trusted first
    r = http.patch(f"/api/v1/deployments/{dep}", headers=ADMIN, json={"config": bad})
    assert r.status_code == 422 and "trusted" in r.json()["error"], r.text


def test_admin_names_a_callable_for_a_trusted_owner(platform: Platform, tmp_path: Path) -> None:
    """The allow-list works when used as intended: an admin names the type, one by one."""
    import numpy as np
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    model = make_pipeline(FunctionTransformer(np.nan_to_num, feature_names_out="one-to-one"),
                          DecisionTreeClassifier(max_depth=2)).fit(x, y)  # fmt: skip
    data = sio.dumps(model)
    untrusted = sio.get_untrusted_types(data=data)
    assert "sklearn.tree._tree.Tree" in untrusted  # allowed by the operator's default list
    trent = platform.user("trent")
    _trust(platform, trent)
    _model(platform, trent, "t2")
    callables = [t for t in untrusted if t != "sklearn.tree._tree.Tree"]
    assert callables == ["numpy.nan_to_num"]
    # trusted, but `trusted` admits data classes only: the function is refused by the loader
    r = platform.upload(trent, "t2", data)
    assert r.status_code == 422 and "numpy.nan_to_num" in r.json()["error"], r.text
    meta: dict[str, Any] = {"parameters": {"trusted_types": callables}}
    r = platform.upload(trent, "t2", data, meta)  # a function the member cannot name
    assert r.status_code == 422 and "only an admin" in r.json()["error"], r.text
    r = platform.upload(ADMIN, "t2", data, meta)
    assert r.status_code == 201 and r.json()["status"] == "ready", r.text


def test_code_running_models_never_run_in_the_server_process(platform: Platform) -> None:
    """A trusted owner's pickle loads in worker processes only: `instance_kind: thread` would
    unpickle it inside the server, outside the worker's isolation."""
    import pickle

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    data = pickle.dumps(LogisticRegression(max_iter=300).fit(x, y))
    trent = platform.user("trent")
    _trust(platform, trent)
    _model(platform, trent, "t3")
    r = platform.upload(trent, "t3", data, filename="m.pkl")
    assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    r = platform.http.post("/api/v1/deployments", headers=trent,
                           json={"model": "t3", "config": {"instance_kind": "thread"}})  # fmt: skip
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("config.instance_kind:"), r.text
    r = platform.http.post("/api/v1/deployments", headers=trent, json={"model": "t3"})
    assert r.status_code == 201, r.text
