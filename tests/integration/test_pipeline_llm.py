"""A pipeline step on a model that generates text: a real server with a tiny random GPT-2 built
offline (`runtime: llm`), called through the pipeline and through Triton's generate extension
with the same prompts and greedy sampling: the texts must be equal."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import yaml

from inferd import serve
from inferd.runner import RunningServer
from tests.conftest import ADMIN
from tests.llm_models import tiny_llm

GREEDY = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("pipeline-llm")
    tiny_llm(repo / "tiny" / "1", "gpt2")
    (repo / "tiny" / "model.yaml").write_text("runtime: llm\nparameters: {max_num_seqs: 4}\n")
    doc = {
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "answer", "datatype": "BYTES", "shape": [-1]}],
        "root": "main",
        "nodes": {"main": {"kind": "sequence", "steps": [
            {"model": "tiny", "outputs": {"text_output": "answer"}}]}},
    }  # fmt: skip
    (repo / "writer" / "1").mkdir(parents=True)
    (repo / "writer" / "model.yaml").write_text(
        yaml.safe_dump({"platform": "pipeline", "pipeline": doc})
    )
    running = serve(model_repository=repo, http_port=0, block=False, grpc={"enabled": False},
                    log_level="warning")  # fmt: skip
    assert running is not None
    with running:
        yield running


def test_a_generating_step_answers_as_generate_does(server: RunningServer) -> None:
    prompts = ["the quick brown", "hello world"]
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as c:
        expected = []
        for prompt in prompts:
            r = c.post("/v2/models/tiny/generate", json={"text_input": prompt, **GREEDY})
            assert r.status_code == 200, r.text
            expected.append(r.json()["text_output"])
        body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2],
                            "data": prompts}], "parameters": GREEDY}  # fmt: skip
        r = c.post("/v2/models/writer/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["name"] == "answer" and out["data"] == expected
        assert all(expected)  # six tokens each: not empty
        bad = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                           "data": ["x"]}], "parameters": {"temperature": -1}}  # fmt: skip
        r = c.post("/v2/models/writer/infer", json=bad)
        assert r.status_code == 400, r.text
        assert "step 'main[0]' (model 'tiny')" in r.json()["error"]
        assert "temperature" in r.json()["error"]
