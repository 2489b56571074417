"""The SDK's client-only logic, against httpx.MockTransport (no sockets): error mapping,
credentials in headers, upload streaming and progress, V2 tensor encoding and decoding.
What a real server does with these requests is covered by tests/e2e/test_cli.py."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inferd.client import Client, Credentials, InferdClientError
from inferd.client import credentials as saved_file
from inferd.client.errors import parse_retry_after

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **kwargs: Any) -> Client:
    return Client("http://inferd.test", transport=httpx.MockTransport(handler), **kwargs)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    return lambda _: httpx.Response(status, json=body, headers=headers)


# ---- errors ------------------------------------------------------------------------------


def test_non_2xx_raises_with_the_server_message_and_status() -> None:
    with (
        client(answer(404, {"error": "model 'x' not found"})) as c,
        pytest.raises(InferdClientError) as e,
    ):
        c.model("x")
    assert e.value.status == 404
    assert e.value.message == "model 'x' not found" == str(e.value)
    assert e.value.retry_after is None


def test_retry_after_is_parsed_on_429_and_503() -> None:
    for status in (429, 503):
        h = answer(status, {"error": "slow down"}, {"Retry-After": "7"})
        with client(h) as c, pytest.raises(InferdClientError) as e:
            c.models()
        assert (e.value.status, e.value.retry_after) == (status, 7.0)
    # the HTTP-date form counts from now
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:30 GMT", now=10.0) == 20.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_error_body_without_json_still_gives_a_message() -> None:
    h: Handler = lambda _: httpx.Response(502, text="Bad Gateway from proxy")  # noqa: E731
    with client(h) as c, pytest.raises(InferdClientError) as e:
        c.models()
    assert e.value.status == 502 and e.value.message == "Bad Gateway from proxy"
    h = lambda _: httpx.Response(500)  # noqa: E731
    with client(h) as c, pytest.raises(InferdClientError) as e:
        c.models()
    assert e.value.message == "HTTP 500 Internal Server Error"


def test_redirects_are_not_success() -> None:
    with (
        client(answer(307, None, {"Location": "/elsewhere"})) as c,
        pytest.raises(InferdClientError),
    ):
        c.models()


def test_unreachable_server_is_status_0() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client(refuse) as c, pytest.raises(InferdClientError) as e:
        c.me()
    assert e.value.status == 0 and "cannot reach http://inferd.test" in e.value.message


# ---- credentials -------------------------------------------------------------------------


def recorder(seen: list[httpx.Request], body: Any = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={} if body is None else body)

    return handle


def test_token_and_key_are_sent_as_bearer() -> None:
    seen: list[httpx.Request] = []
    with client(recorder(seen), token="tok-1") as c:
        c.me()
    with client(recorder(seen), api_key="inferd_abc_def") as c:
        c.me()
    with client(recorder(seen)) as c:
        c.models()
    assert seen[0].headers["authorization"] == "Bearer tok-1"
    assert seen[1].headers["authorization"] == "Bearer inferd_abc_def"
    assert "authorization" not in seen[2].headers
    with pytest.raises(ValueError):
        Client(token="a", api_key="b")


def test_login_stores_tokens_and_uses_them() -> None:
    seen: list[httpx.Request] = []
    pair = {"access_token": "acc", "refresh_token": "ref", "token_type": "bearer",
            "expires_in": 900}  # fmt: skip
    with client(recorder(seen, pair), api_key="inferd_old_key") as c:
        assert c.login("alice", "pw") == pair
        c.me()
    assert json.loads(seen[0].content) == {"username": "alice", "password": "pw"}
    assert "authorization" not in seen[0].headers  # a stale credential must not spoil a login
    assert seen[1].headers["authorization"] == "Bearer acc"  # the session replaced the key
    assert c.refresh_token == "ref"


def test_expired_token_is_refreshed_once_and_the_call_retried() -> None:
    seen: list[str] = []
    saved: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        seen.append(f"{request.url.path} {auth}")
        if request.url.path == "/api/v1/auth/refresh":
            assert json.loads(request.content) == {"refresh_token": "ref-1"}
            return httpx.Response(200, json={"access_token": "acc-2", "refresh_token": "ref-2"})
        if auth == "Bearer acc-1":
            return httpx.Response(401, json={"error": "token expired"})
        return httpx.Response(200, json={"username": "alice"})

    with client(handle, token="acc-1", refresh_token="ref-1", on_tokens=saved.append) as c:
        assert c.me() == {"username": "alice"}
    # the expired token is not sent along with the refresh (the server would refuse it)
    assert seen == ["/api/v1/auth/me Bearer acc-1", "/api/v1/auth/refresh ",
                    "/api/v1/auth/me Bearer acc-2"]  # fmt: skip
    assert saved == [{"access_token": "acc-2", "refresh_token": "ref-2"}]


def jwt_expiring_at(exp: float) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": int(exp)}).encode()).rstrip(b"=")
    return f"e30.{payload.decode()}.sig"


def test_a_session_about_to_expire_is_refreshed_before_the_call() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.path} {request.headers.get('authorization', '')}")
        if request.url.path == "/api/v1/auth/refresh":
            return httpx.Response(200, json={"access_token": "new", "refresh_token": "r2"})
        return httpx.Response(200, json={})

    old = jwt_expiring_at(time.time() + 2)
    with client(handle, token=old, refresh_token="r1") as c:
        c.models()
    assert seen == ["/api/v1/auth/refresh ", "/api/v1/models Bearer new"]
    seen.clear()
    fresh = jwt_expiring_at(time.time() + 600)
    with client(handle, token=fresh, refresh_token="r1") as c:
        c.models()
    assert seen == [f"/api/v1/models Bearer {fresh}"]


def test_a_failed_refresh_reports_the_original_401() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/auth/refresh":
            return httpx.Response(401, json={"error": "refresh token expired"})
        return httpx.Response(401, json={"error": "token expired"})

    with client(handle, token="a", refresh_token="r") as c, pytest.raises(InferdClientError) as e:
        c.me()
    assert e.value.status == 401 and e.value.message == "token expired"


def test_saved_credentials_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "credentials.json"
    saved_file.save_credentials(Credentials("http://h:1", username="u", api_key="k"), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert saved_file.load_credentials(path) == Credentials("http://h:1", username="u",
                                                            api_key="k")  # fmt: skip
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="damaged"):
        saved_file.load_credentials(path)
    assert saved_file.remove_credentials(path) is True
    assert saved_file.load_credentials(path) is None
    assert saved_file.remove_credentials(path) is False


# ---- uploads -----------------------------------------------------------------------------


def test_upload_streams_the_file_as_multipart_and_reports_progress(tmp_path: Path) -> None:
    payload = os.urandom(300_000)  # several 64 KiB chunks
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(payload)
    seen: list[httpx.Request] = []
    calls: list[tuple[int, int]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(201, json={"version": 1, "status": "ready"})

    meta = {"runtime": "sklearn", "sample_input": {"inputs": []}}
    with client(handle, api_key="inferd_k_x") as c:
        v = c.upload("iris", artifact, meta, on_progress=lambda s, t: calls.append((s, t)))
    assert v == {"version": 1, "status": "ready"}
    (req,) = seen
    assert req.method == "POST" and req.url.path == "/api/v1/models/iris/versions"
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = req.content
    assert int(req.headers["content-length"]) == len(body)  # sized up front, not chunked
    assert payload in body
    assert b'name="file"; filename="model.skops"' in body
    assert b'name="meta"' in body and json.dumps(meta).encode() in body
    assert calls[0] == (0, len(payload)) and calls[-1] == (len(payload), len(payload))
    assert len(calls) >= 5 and all(t == len(payload) for _, t in calls)
    assert [s for s, _ in calls] == sorted(s for s, _ in calls)


class StreamingTransport(httpx.BaseTransport):
    """Consumes the request body chunk by chunk, as a socket would (MockTransport reads it
    whole first), noting how far the upload's progress had got at each chunk."""

    def __init__(self, progress: list[tuple[int, int]]) -> None:
        self.progress = progress
        self.chunks: list[tuple[int, int]] = []  # (chunk size, bytes reported sent by then)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for chunk in request.stream:  # type: ignore[union-attr]
            self.chunks.append((len(chunk), self.progress[-1][0]))
        return httpx.Response(201, json={})


def test_upload_does_not_read_the_file_into_memory(tmp_path: Path) -> None:
    size = 200_000
    artifact = tmp_path / "big.bin"
    artifact.write_bytes(b"x" * size)
    progress: list[tuple[int, int]] = []
    transport = StreamingTransport(progress)
    with Client("http://inferd.test", transport=transport) as c:
        c.upload("m", artifact, on_progress=lambda s, t: progress.append((s, t)))
    file_chunks = [(n, sent) for n, sent in transport.chunks if n == 64 * 1024]
    assert max(n for n, _ in transport.chunks) <= 64 * 1024
    assert len(file_chunks) == 3  # 200,000 bytes: three full 64 KiB chunks and a tail
    # each chunk reached the transport when only the bytes up to it had been read
    assert [sent for _, sent in file_chunks] == [65536, 131072, 196608]
    assert progress[-1] == (size, size)


# ---- inference ---------------------------------------------------------------------------


def infer_recorder(seen: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, "body": json.loads(request.content)})
        return httpx.Response(200, json={"model_name": "m", "outputs": outputs})

    return handle


def test_infer_encodes_numpy_dtypes_and_shapes() -> None:
    seen: list[dict[str, Any]] = []
    inputs = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64": np.array([0.5], dtype=np.float64),
        "i64": np.array([[1], [2]], dtype=np.int64),
        "i32": np.array([7], dtype=np.int32),
        "b": np.array([True, False]),
        "s": np.array(["a", "bc"]),
        "raw": np.array([b"x", b"yz"], dtype=object),
    }
    with client(infer_recorder(seen, [])) as c:
        c.infer("m", inputs, version=3, outputs=["y"])
    (call,) = seen
    assert call["path"] == "/v2/models/m/versions/3/infer"
    got = {t["name"]: (t["datatype"], t["shape"], t["data"]) for t in call["body"]["inputs"]}
    assert got == {
        "f32": ("FP32", [2, 3], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
        "f64": ("FP64", [1], [0.5]),
        "i64": ("INT64", [2, 1], [1, 2]),
        "i32": ("INT32", [1], [7]),
        "b": ("BOOL", [2], [True, False]),
        "s": ("BYTES", [2], ["a", "bc"]),
        "raw": ("BYTES", [2], ["x", "yz"]),
    }
    assert call["body"]["outputs"] == [{"name": "y"}]


def test_infer_encodes_plain_lists_and_tensor_dicts() -> None:
    seen: list[dict[str, Any]] = []
    with client(infer_recorder(seen, [])) as c:
        c.infer("m", {"x": [[5.1, 3.5], [1, 2]], "n": [[1, 2, 3]], "flag": True})
        tensors = [{"name": "x", "datatype": "FP64", "data": np.ones((2, 2))},
                   {"name": "y", "datatype": "INT32", "shape": [2], "data": [1, 2]}]  # fmt: skip
        c.infer("m", tensors)
        with pytest.raises(ValueError, match="rectangular"):
            c.infer("m", {"x": [[1.0, 2.0], [3.0]]})
        with pytest.raises(TypeError, match="mix"):
            c.infer("m", {"x": [1.0, "a"]})
    first = {t["name"]: t for t in seen[0]["body"]["inputs"]}
    assert first["x"] == {"name": "x", "datatype": "FP32", "shape": [2, 2],
                          "data": [5.1, 3.5, 1, 2]}  # fmt: skip
    assert (first["n"]["datatype"], first["n"]["shape"]) == ("INT64", [1, 3])
    assert (first["flag"]["datatype"], first["flag"]["shape"]) == ("BOOL", [])
    second = seen[1]["body"]["inputs"]
    assert second[0] == {"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [1.0] * 4}
    assert second[1] == {"name": "y", "datatype": "INT32", "shape": [2], "data": [1, 2]}
    assert len(seen) == 2  # the bad inputs never reached the server


def test_infer_decodes_outputs_to_numpy() -> None:
    outputs = [
        {"name": "predict", "datatype": "INT64", "shape": [2], "data": [0, 2]},
        {"name": "proba", "datatype": "FP32", "shape": [2, 2], "data": [0.9, 0.1, 0.2, 0.8]},
        {"name": "label", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]},
        {"name": "ok", "datatype": "BOOL", "shape": [], "data": [True]},
    ]
    with client(infer_recorder([], outputs)) as c:
        out = c.infer("m", {"x": np.zeros((2, 4), np.float32)})
    assert out["predict"].dtype == np.int64 and out["predict"].tolist() == [0, 2]
    assert out["proba"].dtype == np.float32 and out["proba"].shape == (2, 2)
    np.testing.assert_allclose(out["proba"], [[0.9, 0.1], [0.2, 0.8]], rtol=1e-6)
    assert out["label"].dtype == object and out["label"].tolist() == [["a", "b"]]
    assert out["ok"].shape == () and bool(out["ok"]) is True


def test_predict_raw_posts_the_body_as_is() -> None:
    seen: list[dict[str, Any]] = []
    body = {"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}],
            "parameters": {"k": 1}}  # fmt: skip
    with client(infer_recorder(seen, [{"name": "y"}])) as c:
        assert c.predict_raw("a b", body)["outputs"] == [{"name": "y"}]
    assert seen == [{"path": "/v2/models/a b/infer", "body": body}]
