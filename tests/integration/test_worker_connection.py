"""One worker connection for every replica kind (`workers/connection.py`): requests multiplexed
by id on one real worker process, a caller that gave up leaving no stray answer (nor
shared-memory file) behind, and generation over the same protocol with the chat template
rendered in the server."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inferd.core.errors import ModelExecutionError, ReplicaFailed
from inferd.core.generate import GenerateRequest, SamplingParams
from inferd.core.spec import parse_model_config, spec_to_config
from inferd.workers import ProcessReplica
from inferd.workers.generation import ThreadGenerator, engine_factory
from inferd.workers.generation_process import ProcessGenerator
from inferd.workers.llm_backend import LLMBackend
from tests.llm_models import tiny_llm

MODEL = textwrap.dedent(
    """
    import time
    import numpy as np

    class Model:
        def infer(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            if parameters.get("fail"):
                raise ValueError("asked to fail")
            return {"Y": inputs["X"] * 2}
    """
)
CONFIG = {
    "runtime": "python",
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1]}],
}
#: 2 MiB of FP32: the answer travels through a file in the worker's shared-memory folder
BIG = 1 << 19


@pytest.fixture
async def replica(tmp_path: Path) -> ProcessReplica:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(MODEL)
    spec = parse_model_config("m", CONFIG)
    rep = ProcessReplica(spec, "1", version, "python", "m-1-0")
    await rep.load()
    yield rep  # type: ignore[misc]
    await rep.unload()


def x(value: float, n: int = 4) -> dict[str, np.ndarray]:
    return {"X": np.full(n, value, np.float32)}


async def test_requests_are_multiplexed_and_answered_by_id(replica: ProcessReplica) -> None:
    """Several requests in flight on one worker: each gets its own answer (the worker runs them
    in turn), a failing one fails alone, and a health check is answered meanwhile."""
    calls = [replica.infer(x(i), None, {"sleep": 0.05}) for i in range(5)]
    failing = replica.infer(x(1), None, {"fail": True})
    results = await asyncio.gather(*calls, failing, replica.ping(30), return_exceptions=True)
    for i, result in enumerate(results[:5]):
        assert not isinstance(result, BaseException), result
        np.testing.assert_array_equal(result.outputs["Y"], np.full(4, 2 * i, np.float32))
    assert isinstance(results[5], ModelExecutionError)
    assert "asked to fail" in results[5].message
    assert results[6] is None and replica.alive


async def test_a_caller_that_gave_up_leaves_nothing_behind(replica: ProcessReplica) -> None:
    shm = replica._conn.shm
    assert shm is not None  # the big answers below go through it
    slow = asyncio.create_task(replica.infer(x(3, BIG), None, {"sleep": 0.5}))
    await asyncio.sleep(0.1)
    slow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await slow
    after = await replica.infer(x(5, BIG), None, None)
    np.testing.assert_array_equal(after.outputs["Y"], np.full(BIG, 10, np.float32))
    await replica.ping(30)  # the cancelled call's answer has come and gone by now
    assert list(shm.iterdir()) == []
    assert replica.alive


async def test_a_killed_worker_fails_what_is_in_flight_with_its_reason(
    replica: ProcessReplica,
) -> None:
    calls = [asyncio.create_task(replica.infer(x(i), None, {"sleep": 1})) for i in range(3)]
    await asyncio.sleep(0.2)
    assert replica.pid is not None
    replica._conn.fail("the test killed it")
    for call in calls:
        with pytest.raises(ReplicaFailed) as err:
            await call
        assert err.value.message.endswith("failed while running a request: the test killed it")
    assert await replica.wait_exit() == "the test killed it"
    assert not replica.alive


async def test_generation_streams_and_chat_template_over_the_same_protocol(
    tmp_path: Path,
) -> None:
    path = tiny_llm(tmp_path / "tiny" / "1")
    spec = parse_model_config("tiny", {"runtime": "llm", "parameters": {"max_num_seqs": 4}})
    gen = ProcessGenerator(spec, "1", path, "tiny-1-0")
    thread = ThreadGenerator(engine_factory(spec, path), "tiny-1-t")
    await asyncio.gather(gen.load(), thread.load())
    try:
        assert isinstance(gen, LLMBackend) and isinstance(thread, LLMBackend)
        assert gen.max_model_len == thread.max_model_len == 256
        # the chat template renders here, as the worker's engine would have
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        assert gen._template is not None
        local = await gen.chat_prompt(messages)
        assert local == await gen._engine_chat_prompt(messages)
        assert local == await thread.chat_prompt(messages)
        assert local.endswith("<|assistant|>")
        # two generations on one connection, one of them aborted by its id
        greedy = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        long = gen.generate(GenerateRequest("same-id", prompt=local, params=greedy))
        first = await anext(long)
        assert first.request_id == "same-id" and not first.finished
        await gen.abort("same-id")  # at once: the 200-token generation cannot be done yet
        short = GenerateRequest("other", prompt="hello", params=SamplingParams(max_tokens=3))
        events = [ev async for ev in gen.generate(short)]
        assert events[-1].finished and events[-1].completion_tokens == 3
        rest = [ev async for ev in long]
        assert rest[-1].finish_reason == "abort" and rest[-1].completion_tokens < 200
        # the same request id again is a new generation, untouched by the aborted one's end
        again = GenerateRequest("same-id", prompt="hello", params=SamplingParams(max_tokens=2))
        events = [ev async for ev in gen.generate(again)]
        assert [ev.finished for ev in events][-1] and events[-1].completion_tokens == 2
        assert gen.stats.running == 0
    finally:
        await asyncio.gather(gen.unload(), thread.unload())


async def test_an_untrusted_members_chat_template_renders_in_the_worker_only(
    tmp_path: Path,
) -> None:
    """A deployment of an owner who is not trusted (`untrusted_files`): the server parses none
    of its files, so the sandboxed worker renders the chat template, with the same result."""
    path = tiny_llm(tmp_path / "tiny" / "1")
    config = {"runtime": "llm", "untrusted_files": True, "parameters": {"max_num_seqs": 2}}
    spec = parse_model_config("tiny", config)
    assert spec.untrusted_files and spec_to_config(spec)["untrusted_files"] is True
    gen = ProcessGenerator(spec, "1", path, "tiny-1-u")
    await gen.load()
    try:
        assert gen._template is None
        messages = [{"role": "user", "content": "hi"}]
        prompt = await gen.chat_prompt(messages)
        assert prompt.endswith("<|assistant|>") and "hi" in prompt
    finally:
        await gen.unload()
