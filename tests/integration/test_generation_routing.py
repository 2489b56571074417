"""A deployment's header rules route generation on every protocol that generates: OpenAI
completions and chat (plain and streamed, the `openai` SDK), V2 generate, the WebSocket
endpoint (the handshake's headers, the `websockets` client) and gRPC ModelStreamInfer (call
metadata, tritonclient). Two versions of a tiny random Llama, uploaded by a member and deployed
with version 1 taking all the traffic; a rule sends tenant `beta` to version 2. Each answer
names the revision that made it."""

from __future__ import annotations

import io
import queue
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest
import tritonclient.grpc as tc
from websockets.asyncio.client import connect

from tests.integration.platform import Platform
from tests.llm_models import tiny_llm

TENANT = {"x-tenant": "beta"}
LLM: dict[str, Any] = {"max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("genroute")
    folder = tiny_llm(root / "llm", "llama")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    p = Platform(root / "data").start()
    owner = p.user("gen")
    p.public_model(owner, "chat", buf.getvalue(), {"runtime": "llm"}, 2, "model.zip")
    routing = {"rules": [{"header": "X-Tenant", "value": "beta", "version": 2}]}
    d = p.deploy(owner, {"model": "chat", "traffic": {"1": 100, "2": 0}, "routing": routing},
                 timeout=180)  # fmt: skip
    try:
        yield {"p": p, "owner": owner, "dep": d}
    finally:
        p.stop()


def _url(world: dict[str, Any]) -> str:
    server = world["p"].server
    assert server is not None
    return str(server.url)


def test_openai_completions_and_chat_follow_the_rules(world: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=f"{_url(world)}/v1", api_key="EMPTY", max_retries=0) as client:
        for headers, want in ((None, "1"), (TENANT, "2")):
            r = client.completions.with_raw_response.create(
                model="chat", prompt="hi", extra_headers=headers, **LLM
            )
            assert r.headers["x-inferd-model-version"] == want
            r = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers, **LLM)  # fmt: skip
            assert r.headers["x-inferd-model-version"] == want
            with client.completions.with_streaming_response.create(
                model="chat", prompt="hi", stream=True, extra_headers=headers, **LLM
            ) as s:
                assert s.headers["x-inferd-model-version"] == want
                assert "[DONE]" in s.text()


def test_v2_generate_follows_the_rules(world: dict[str, Any]) -> None:
    body = {"text_input": "hi", "parameters": LLM}
    with httpx.Client(base_url=_url(world), timeout=60) as http:
        for headers, want in ((None, "1"), (TENANT, "2")):
            r = http.post("/v2/models/chat/generate", json=body, headers=headers)
            assert r.status_code == 200 and r.json()["model_version"] == want, r.text
            # a version in the path wins over the rule
            r = http.post("/v2/models/chat/versions/1/generate", json=body, headers=headers)
            assert r.json()["model_version"] == "1", r.text


async def test_websocket_follows_the_handshake_headers(world: dict[str, Any]) -> None:
    url = _url(world).replace("http://", "ws://") + "/v2/models/chat/generate_stream/ws"
    for headers, want in ((None, "1"), (TENANT, "2")):
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(orjson.dumps({"id": "a", "text_input": "hi", "parameters": LLM}).decode())
            versions = set()
            while True:
                m = orjson.loads(await ws.recv())
                assert "error" not in m, m
                versions.add(m["model_version"])
                if m.get("final"):
                    break
        assert versions == {want}


def test_grpc_stream_follows_the_call_metadata(world: dict[str, Any]) -> None:
    server = world["p"].server
    for headers, want in ((None, "1"), (TENANT, "2")):
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()

        def callback(result: Any, error: Any, got: queue.Queue[tuple[Any, Any]] = got) -> None:
            got.put((result, error))

        client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            client.start_stream(callback=callback, headers=headers)
            t = tc.InferInput("text_input", [1], "BYTES")
            t.set_data_from_numpy(np.array([b"hi"], dtype=object))
            client.async_stream_infer("chat", [t], request_id="r",
                                      parameters={"max_tokens": 2})  # fmt: skip
            versions = set()
            while True:
                result, error = got.get(timeout=60)
                assert error is None, error
                resp = result.get_response()
                versions.add(resp.model_version)
                if resp.parameters["triton_final_response"].bool_param:
                    break
            client.stop_stream()
        finally:
            client.close()
        assert versions == {want}


def test_a_generation_in_flight_ends_normally_when_its_revision_is_removed(
    world: dict[str, Any],
) -> None:
    """A stream running on version 2 while the deployment moves to version 1 alone: version 2
    unloads only once the stream has ended, and the stream ends as asked (no error event)."""
    p, headers, dep = world["p"], world["owner"], world["dep"]
    body = {"text_input": "hi", "parameters": {"max_tokens": 240, "temperature": 0,
                                               "ignore_eos": True}}  # fmt: skip
    events = []
    with (
        httpx.Client(base_url=_url(world), timeout=120) as http,
        http.stream("POST", "/v2/models/chat/generate_stream", json=body, headers=TENANT) as r,
    ):
        assert r.status_code == 200 and r.headers["x-inferd-model-version"] == "2"
        lines = r.iter_lines()
        for line in lines:  # the first token: the stream runs on version 2
            if line.startswith("data:"):
                events.append(orjson.loads(line[5:]))
                break
        moved = p.http.patch(f"/api/v1/deployments/{dep['id']}", headers=headers,
                             json={"version": 1, "routing": {}})  # fmt: skip
        assert moved.status_code == 200, moved.text
        for line in lines:
            if line.startswith("data:"):
                events.append(orjson.loads(line[5:]))
    assert all("error" not in e for e in events), [e for e in events if "error" in e]
    assert events[-1].get("finish_reason") == "length", events[-1]
    assert {e["model_version"] for e in events} == {"2"}
    d = p.wait_deployment(headers, dep["id"], timeout=120)
    assert d["status"] == "ready" and d["traffic"] == [{"version": 1, "weight": 100}], d
    r = p.http.post("/v2/models/chat/versions/2/generate", json={"text_input": "hi"})
    assert r.status_code == 404, r.text


def test_a_canary_of_an_llm_is_analysed_on_generation_requests(world: dict[str, Any]) -> None:
    """OpenAI completions alone reach the canary's analysis: its outcomes (time to the first
    token as latency) are counted, and the healthy canary is promoted."""
    p = world["p"]
    headers = world["owner"]
    dep = world["dep"]
    r = p.http.patch(f"/api/v1/deployments/{dep['id']}", headers=headers,
                     json={"version": 1, "routing": {}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert p.wait_deployment(headers, dep["id"], timeout=120)["status"] == "ready"
    plan = {"steps": [50], "dwell_s": 0, "interval_s": 0.05,
            "analysis": {"min_requests": 4, "latency_tolerance_ms": 60_000}}  # fmt: skip
    r = p.http.post(f"/api/v1/deployments/{dep['id']}/rollout", headers=headers,
                    json={"strategy": "canary", "version": 2, "canary": plan},
                    timeout=300)  # fmt: skip
    assert r.status_code == 200, r.text
    with openai.OpenAI(base_url=f"{_url(world)}/v1", api_key="EMPTY", max_retries=0) as client:
        for _ in range(200):
            d = p.http.get(f"/api/v1/deployments/{dep['id']}", headers=headers).json()
            if d["rollout"]["phase"] != "progressing":
                break
            client.completions.create(model="chat", prompt="hi", **LLM)
    assert d["rollout"]["phase"] == "promoted", d["rollout"]
    passed = [e for e in d["rollout"]["events"] if e["event"] == "step_passed"]
    assert passed and passed[0]["canary"]["requests"] >= 4, passed
    assert passed[0]["canary"]["latency_ms"]["p50"] > 0, passed
