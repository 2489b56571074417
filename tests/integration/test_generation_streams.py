"""Token streams beyond SSE on a tiny random GPT-2 (`runtime: llm`): gRPC ModelStreamInfer as
Triton's decoupled models answer it (tritonclient), and the WebSocket endpoint (the `websockets`
client). The oracle is the non-streamed greedy OpenAI completion of the same prompt."""

from __future__ import annotations

import asyncio
import queue
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tc
from fastapi.routing import APIWebSocketRoute
from tritonclient.utils import InferenceServerException
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from inferd import serve
from inferd.api.dataplane import POLICY
from inferd.api.http.websocket import OPERATION as SOCKET_OPERATION
from inferd.api.http.websocket import TokenSocket, socket_router
from inferd.runner import RunningServer
from tests.conftest import ADMIN, ADMIN_KEY
from tests.integration.conftest import Identity
from tests.llm_models import tiny_llm

LLM_YAML = textwrap.dedent(
    """
    runtime: llm
    parameters: {max_num_seqs: 8}
    """
)
GREEDY: dict[str, Any] = {"temperature": 0, "ignore_eos": True}
LONG = 240  # close to the model's 256 positions: far longer than a cancel takes


def _serve(root: Path, **settings: Any) -> RunningServer:
    repo = root / "repo"
    if not repo.exists():
        tiny_llm(repo / "tiny" / "1", "gpt2")
        (repo / "tiny" / "model.yaml").write_text(LLM_YAML)
    echo = {"model": Identity(), "inputs": [{"name": "IN", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "OUT", "datatype": "BYTES", "shape": [-1]}]}  # fmt: skip
    running = serve(model_repository=repo, models={"echo": echo}, http_port=0, block=False,
                    grpc={"port": 0}, data_dir=root / "data", log_level="warning",
                    **settings)  # fmt: skip
    assert running is not None
    return running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with _serve(tmp_path_factory.mktemp("streams")) as running:
        yield running


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server where inference needs credentials."""
    root = tmp_path_factory.mktemp("locked")
    with _serve(root, auth={"anonymous_inference": False}) as running:
        yield running


def completion(server: RunningServer, prompt: str, max_tokens: int) -> str:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, **GREEDY}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["text"]
    return text


def engine_stats(server: RunningServer) -> Any:
    return server.engine.version("tiny").scheduler.live()[0].replica.stats


def wait_idle(server: RunningServer) -> None:
    deadline = time.monotonic() + 10
    while engine_stats(server).running or engine_stats(server).waiting:
        assert time.monotonic() < deadline, "an aborted generation still holds its slot"
        time.sleep(0.02)


# ---- gRPC ------------------------------------------------------------------------------------


class Collector:
    """tritonclient stream callback: (result, error) pairs on a queue."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def __call__(self, result: Any, error: Any) -> None:
        self.q.put((result, error))

    def next(self) -> tuple[Any, Any]:
        return self.q.get(timeout=60)

    def until_final(self, ids: set[str]) -> dict[str, list[Any]]:
        """ModelInferResponses by id until every id got its final one."""
        out: dict[str, list[Any]] = {i: [] for i in ids}
        open_ids = set(ids)
        while open_ids:
            result, error = self.next()
            assert error is None, error
            resp = result.get_response()
            out[resp.id].append(resp)
            if resp.parameters["triton_final_response"].bool_param:
                open_ids.discard(resp.id)
        return out


def text_input(prompt: str, name: str = "text_input") -> tc.InferInput:
    t = tc.InferInput(name, [1], "BYTES")
    t.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    return t


def text_of(responses: list[Any]) -> str:
    parts = []
    for r in responses:
        assert [o.name for o in r.outputs] == ["text_output"]
        raw = r.raw_output_contents[0]
        parts.append(raw[4:].decode())  # BYTES wire format: 4-byte length, then the bytes
    return "".join(parts)


@pytest.fixture
def grpc_client(server: RunningServer) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        yield client
    finally:
        client.close()


def test_grpc_stream_one_response_per_token_event(
    server: RunningServer, grpc_client: tc.InferenceServerClient
) -> None:
    prompts = {"a": "the quick brown", "b": "hello world"}
    expected = {k: completion(server, p, 12) for k, p in prompts.items()}
    got = Collector()
    grpc_client.start_stream(callback=got)
    for rid, prompt in prompts.items():  # two at once on one stream
        grpc_client.async_stream_infer("tiny", [text_input(prompt)], request_id=rid,
                                       parameters={"max_tokens": 12, **GREEDY})  # fmt: skip
    responses = got.until_final(set(prompts))
    grpc_client.stop_stream()
    for rid, rs in responses.items():
        assert len(rs) > 1
        assert text_of(rs) == expected[rid]
        finals = [r.parameters["triton_final_response"].bool_param for r in rs]
        assert finals == [False] * (len(rs) - 1) + [True]
        assert rs[-1].parameters["finish_reason"].string_param == "length"
        assert rs[-1].parameters["completion_tokens"].int64_param == 12
        assert {(r.model_name, r.model_version) for r in rs} == {("tiny", "1")}


def test_grpc_stream_options_and_unary_infer(
    server: RunningServer, grpc_client: tc.InferenceServerClient
) -> None:
    expected = completion(server, "tokens stream", 8)
    got = Collector()
    grpc_client.start_stream(callback=got)
    # `stream` false: one response with the whole text; `text` is accepted as the input name;
    # sampling fields may come as Triton vLLM's JSON `sampling_parameters`
    flag = tc.InferInput("stream", [1], "BOOL")
    flag.set_data_from_numpy(np.array([False]))
    sampling = tc.InferInput("sampling_parameters", [1], "BYTES")
    sampling.set_data_from_numpy(np.array([orjson.dumps({"max_tokens": 8, **GREEDY})],
                                          dtype=object))  # fmt: skip
    grpc_client.async_stream_infer("tiny", [text_input("tokens stream", "text"), flag, sampling],
                                   request_id="whole")  # fmt: skip
    whole = got.until_final({"whole"})["whole"]
    assert len(whole) == 1 and text_of(whole) == expected
    # tritonclient's empty final response: the flag comes on an extra response without outputs
    grpc_client.async_stream_infer("tiny", [text_input("tokens stream")], request_id="empty",
                                   parameters={"max_tokens": 8, **GREEDY},
                                   enable_empty_final_response=True)  # fmt: skip
    rs = got.until_final({"empty"})["empty"]
    assert not rs[-1].outputs and rs[-1].parameters["finish_reason"].string_param == "length"
    assert text_of(rs[:-1]) == expected
    # a non-generative model in the same stream still gets one plain response
    echo = tc.InferInput("IN", [1], "BYTES")
    echo.set_data_from_numpy(np.array([b"x"], dtype=object))
    grpc_client.async_stream_infer("echo", [echo], request_id="echo")
    result, error = got.next()
    assert error is None and result.get_response().id == "echo"
    assert "triton_final_response" not in result.get_response().parameters
    grpc_client.stop_stream()
    # unary ModelInfer on the LLM: text in, text out, through the scheduler
    out = grpc_client.infer("tiny", [text_input("tokens stream", "text")],
                            parameters={"max_tokens": 8, **GREEDY})  # fmt: skip
    assert out.as_numpy("text")[0].decode() == expected


def test_grpc_stream_error_in_band_then_next_request_works(
    server: RunningServer, grpc_client: tc.InferenceServerClient
) -> None:
    got = Collector()
    grpc_client.start_stream(callback=got)
    grpc_client.async_stream_infer("tiny", [text_input("hello")], request_id="bad",
                                   parameters={"max_tokens": 4, "temperature": 5})  # fmt: skip
    result, error = got.next()
    assert result is None and isinstance(error, InferenceServerException)
    assert "temperature" in str(error)
    grpc_client.async_stream_infer("tiny", [text_input("hello")], request_id="next",
                                   parameters={"max_tokens": 4, **GREEDY})  # fmt: skip
    assert text_of(got.until_final({"next"})["next"]) == completion(server, "hello", 4)
    grpc_client.async_stream_infer("nope", [text_input("hello")], request_id="unknown")
    result, error = got.next()
    assert result is None and "unknown model: 'nope'" in str(error)
    grpc_client.stop_stream()


def test_grpc_cancel_aborts_the_generation(
    server: RunningServer, grpc_client: tc.InferenceServerClient
) -> None:
    before = engine_stats(server).generated_tokens
    got = Collector()
    grpc_client.start_stream(callback=got)
    grpc_client.async_stream_infer("tiny", [text_input("hello")], request_id="long",
                                   parameters={"max_tokens": LONG, **GREEDY})  # fmt: skip
    result, error = got.next()
    assert error is None and result.get_response().id == "long"
    grpc_client.stop_stream(cancel_requests=True)
    wait_idle(server)
    assert engine_stats(server).generated_tokens - before < LONG


def test_grpc_refuses_anonymous_where_credentials_are_required(locked: RunningServer) -> None:
    client = tc.InferenceServerClient(f"127.0.0.1:{locked.grpc_port}")
    got = Collector()
    client.start_stream(callback=got)
    client.async_stream_infer("tiny", [text_input("hello")], request_id="anon",
                              parameters={"max_tokens": 4})  # fmt: skip
    result, error = got.next()
    assert result is None and "authentication required" in str(error)
    client.stop_stream()
    client.close()
    client = tc.InferenceServerClient(f"127.0.0.1:{locked.grpc_port}")
    got = Collector()
    client.start_stream(callback=got, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    client.async_stream_infer("tiny", [text_input("hello")], request_id="admin",
                              parameters={"max_tokens": 4, **GREEDY})  # fmt: skip
    assert text_of(got.until_final({"admin"})["admin"]) == completion_as_admin(locked, "hello", 4)
    client.stop_stream()
    client.close()


def completion_as_admin(server: RunningServer, prompt: str, max_tokens: int) -> str:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, **GREEDY}
    r = httpx.post(f"{server.url}/v1/completions", json=body, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["text"]
    return text


# ---- WebSocket -------------------------------------------------------------------------------


def ws_url(server: RunningServer, model: str = "tiny", version: str | None = None) -> str:
    base = server.url.replace("http://", "ws://")
    middle = f"/versions/{version}" if version else ""
    return f"{base}/v2/models/{model}{middle}/generate_stream/ws"


async def recv(ws: ClientConnection) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
    return doc


async def start(ws: ClientConnection, rid: str, prompt: str, max_tokens: int) -> None:
    params = {"max_tokens": max_tokens, **GREEDY}
    await ws.send(orjson.dumps({"id": rid, "text_input": prompt, "parameters": params}).decode())


async def until_final(ws: ClientConnection, ids: set[str]) -> list[dict[str, Any]]:
    messages = []
    open_ids = set(ids)
    while open_ids:
        m = await recv(ws)
        assert "error" not in m, m
        messages.append(m)
        if m.get("final"):
            open_ids.discard(m["id"])
    return messages


def test_every_websocket_route_declares_a_policy() -> None:
    # the routes are served by the management app (test_ws_* below use both paths); FastAPI
    # hides included routers, so the router is inspected as built
    routes = socket_router(cast(TokenSocket, None)).routes
    paths = {r.path for r in routes if isinstance(r, APIWebSocketRoute)}
    assert len(routes) == len(paths) == 2
    assert paths == set(SOCKET_OPERATION)
    assert {POLICY[op] for op in SOCKET_OPERATION.values()} == {"infer"}


async def test_ws_concurrent_generations_interleave_and_match(server: RunningServer) -> None:
    prompts = {"a": "the quick brown", "b": "a model server"}
    expected = {k: completion(server, p, 10) for k, p in prompts.items()}
    async with connect(ws_url(server, version="1")) as ws:
        for rid, prompt in prompts.items():
            await start(ws, rid, prompt, 10)
        messages = await until_final(ws, set(prompts))
    order = [m["id"] for m in messages if not m.get("final")]
    for rid in prompts:
        mine = [m for m in messages if m["id"] == rid]
        assert "".join(m["text_output"] for m in mine) == expected[rid]
        final = mine[-1]
        assert final["final"] and final["text_output"] == "" and final["finish_reason"] == "length"
        assert final["usage"]["completion_tokens"] == 10 and final["usage"]["prompt_tokens"] > 0
        assert {(m["model_name"], m["model_version"]) for m in mine} == {("tiny", "1")}
    # shared engine steps: neither generation ran entirely before the other started
    assert order.index("b") < len(order) - 1 - order[::-1].index("a")
    assert order.index("a") < len(order) - 1 - order[::-1].index("b")


async def test_ws_errors_are_messages_and_the_socket_stays_open(server: RunningServer) -> None:
    async with connect(ws_url(server)) as ws:
        await ws.send(orjson.dumps({"id": "t", "text_input": "hi",
                                    "parameters": {"temperature": 5}}).decode())  # fmt: skip
        m = await recv(ws)
        assert m["id"] == "t" and m["error"]["code"] == 400
        assert "temperature" in m["error"]["message"]
        await ws.send("not json")
        m = await recv(ws)
        assert m["id"] is None and m["error"]["code"] == 400
        await ws.send(orjson.dumps({"id": "p", "text_input": 3}).decode())
        m = await recv(ws)
        assert m["error"]["code"] == 400 and "text_input" in m["error"]["message"]
        await start(ws, "ok", "hello", 4)
        messages = await until_final(ws, {"ok"})
        assert "".join(m["text_output"] for m in messages) == completion(server, "hello", 4)
    for model, code in (("nope", 404), ("echo", 501)):
        async with connect(ws_url(server, model)) as ws:
            await ws.send(orjson.dumps({"id": "x", "text_input": "hi"}).decode())
            m = await recv(ws)
            assert m["id"] == "x" and m["error"]["code"] == code, m
            if code == 404:
                assert "'nope' is not found" in m["error"]["message"]


async def test_ws_cancel_message_aborts_one_generation(server: RunningServer) -> None:
    before = engine_stats(server).generated_tokens
    async with connect(ws_url(server)) as ws:
        await start(ws, "long", "hello", LONG)
        first = await recv(ws)
        assert first["id"] == "long" and "final" not in first
        await ws.send(orjson.dumps({"id": "long", "cancel": True}).decode())
        while not (m := await recv(ws)).get("final"):
            assert m["id"] == "long" and "error" not in m
        assert m["finish_reason"] == "abort" and m["usage"]["completion_tokens"] < LONG
        await asyncio.to_thread(wait_idle, server)
        # the socket keeps serving
        await start(ws, "after", "hello", 3)
        assert (await until_final(ws, {"after"}))[-1]["usage"]["completion_tokens"] == 3
    assert engine_stats(server).generated_tokens - before < LONG + 3


async def test_ws_closing_the_socket_aborts_its_generations(server: RunningServer) -> None:
    before = engine_stats(server).generated_tokens
    async with connect(ws_url(server)) as ws:
        for rid in ("x", "y"):
            await start(ws, rid, "hello", LONG)
        assert "error" not in await recv(ws)
    await asyncio.to_thread(wait_idle, server)
    assert engine_stats(server).generated_tokens - before < 2 * LONG


async def test_ws_credentials_when_required(locked: RunningServer) -> None:
    for headers in ({}, {"Authorization": "Bearer inferd_AAAAAAAA_" + "B" * 43}):
        async with connect(ws_url(locked), additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.send(orjson.dumps({"id": "x", "text_input": "hi"}).decode())
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert closed.value.rcvd.reason
    async with connect(ws_url(locked), additional_headers={"x-api-key": ADMIN_KEY}) as ws:
        await start(ws, "ok", "hello", 4)
        messages = await until_final(ws, {"ok"})
    assert "".join(m["text_output"] for m in messages) == completion_as_admin(locked, "hello", 4)


# ---- draining ------------------------------------------------------------------------------


async def test_draining_refuses_new_work_on_grpc_and_websocket(server: RunningServer) -> None:
    """After SIGTERM (begin_drain) gRPC ModelInfer, a gRPC token stream and a WebSocket
    generation are refused as shutting down (UNAVAILABLE / in-band 503), as every REST route is
    (tests/integration/test_openai.py): one admission check, in the data plane."""
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    echo = tc.InferInput("IN", [1], "BYTES")
    echo.set_data_from_numpy(np.array([b"x"], dtype=object))
    async with connect(ws_url(server)) as ws:  # a socket opened before the drain began
        server.engine.begin_drain()
        try:
            with pytest.raises(InferenceServerException) as unary:
                client.infer("echo", [echo])
            assert unary.value.status() == "StatusCode.UNAVAILABLE", unary.value
            assert "shutting down" in str(unary.value)
            got = Collector()
            client.start_stream(callback=got)
            try:
                client.async_stream_infer("tiny", [text_input("hi")], request_id="d",
                                          parameters={"max_tokens": 2, **GREEDY})  # fmt: skip
                _, error = got.next()
                assert error is not None and "shutting down" in str(error), error
            finally:
                client.stop_stream()
            await start(ws, "w", "hi", 2)
            m = await recv(ws)
            assert m["id"] == "w" and m["error"]["code"] == 503, m
            assert "shutting down" in m["error"]["message"]
        finally:
            server.engine.stopping = False
            client.close()
    assert completion(server, "hi", 2)  # serving again for the tests after this one
