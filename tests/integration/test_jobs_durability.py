"""Async predictions survive a crash: a real `inferd serve` process, SIGKILLed while it runs
jobs, then started again on the same registry (SQLite and PostgreSQL). Every job ends, none runs
on two processes at once, and a loopback webhook receiver verifies every delivery's signature
with the `standardwebhooks` library, sees each job's completion at least once, and gets the same
webhook id again when it made a delivery fail. Then two nodes on one PostgreSQL share one queue:
each job runs once, and a node that polls rarely is woken by LISTEN/NOTIFY."""

from __future__ import annotations

import itertools
import json
import textwrap
import threading
import time
from collections import defaultdict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import ADMIN
from tests.integration.platform import Platform, ServerProcess

JOBS = 100


def repository(root: Path) -> Path:
    """A model that records the start and the end of every execution (job number, pid, time),
    a line each, in `executions.log` in its worker's scratch dir (its only writable folder:
    `executions` gathers them from `workers.scratch_dir`)."""
    (root / "count" / "1").mkdir(parents=True)
    (root / "count" / "1" / "model.py").write_text(textwrap.dedent("""
        import os, time

        LOG = os.path.join(os.environ["TMPDIR"], "executions.log")

        def note(kind, n):
            fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, f"{kind} {n} {os.getpid()} {time.time():.6f}\\n".encode())
            finally:
                os.close(fd)

        class Model:
            def infer(self, inputs, parameters):
                n = int(inputs["X"][0])
                note("start", n)
                time.sleep(float(parameters.get("sleep", 0)))
                note("end", n)
                return {"Y": inputs["X"] * 2}
    """))  # fmt: skip
    (root / "count" / "model.yaml").write_text(
        "runtime: python\ntrusted: true\n"
        "inputs: [{name: X, datatype: FP32, shape: [-1]}]\n"
        "outputs: [{name: Y, datatype: FP32, shape: [-1]}]\n"
    )
    return root


def body(n: int, sleep: float) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [float(n)]}],
            "parameters": {"sleep": sleep}}  # fmt: skip


class Receiver:
    """A webhook endpoint on loopback: verifies each delivery with `standardwebhooks`, answers
    500 to the first try of every fifth job's first delivery (so it is retried), 204
    otherwise."""

    def __init__(self) -> None:
        self.secret = ""
        self.seen: dict[str, list[str]] = defaultdict(list)  # job id -> webhook ids, in order
        self.events: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.refused: set[str] = set()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["content-length"]))
                try:
                    doc = Webhook(outer.secret).verify(raw, dict(self.headers))
                except Exception as e:
                    with lock:
                        outer.bad.append(f"{type(e).__name__}: {e}")
                    self.send_response(400)
                    self.end_headers()
                    return
                job = doc["data"]["id"]
                wid = self.headers["webhook-id"]
                with lock:
                    fail = job not in outer.seen and len(outer.seen) % 5 == 0
                    outer.seen[job].append(wid)
                    outer.events.append(doc)
                    if fail:
                        outer.refused.add(job)
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def executions(scratch: Path) -> dict[int, list[tuple[int, float, float | None]]]:
    """Each job number's executions, from every worker's log under `scratch`: (pid, start,
    end or None when it was killed). Read while the server runs: a worker's scratch dir goes
    with it (a SIGKILLed server's workers leave theirs)."""
    runs: dict[int, list[tuple[int, float, float | None]]] = defaultdict(list)
    open_: dict[tuple[int, int], float] = {}
    lines = [ln for f in scratch.rglob("executions.log") for ln in f.read_text().splitlines()]
    for line in lines:
        kind, n, pid, at = line.split()
        key = (int(n), int(pid))
        if kind == "start":
            open_[key] = float(at)
        else:
            runs[int(n)].append((int(pid), open_.pop(key), float(at)))
    for (n, pid), start in open_.items():
        runs[n].append((pid, start, None))
    return runs


def member(http: httpx.Client, name: str) -> dict[str, str]:
    """A new member's API key header (a key outlives the server's restarts)."""
    password = "correct horse battery"
    r = http.post("/api/v1/auth/register", headers=ADMIN,
                  json={"username": name, "password": password})  # fmt: skip
    assert r.status_code == 201, r.text
    login = http.post("/api/v1/auth/login", json={"username": name, "password": password})
    token = {"Authorization": f"Bearer {login.json()['access_token']}"}
    r = http.post("/api/v1/keys", headers=token, json={"name": "jobs", "scopes": ["infer"]})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


SETTINGS: dict[str, dict[str, Any]] = {
    "jobs": {"concurrency": 4, "lease_s": 2, "poll_interval_s": 0.2, "max_attempts": 3},
    "webhooks": {
        "allow_private_urls": "true",
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.5,
        "poll_interval_s": 0.2,
    },
}


def test_a_crash_loses_no_job_and_runs_none_twice_at_once(
    tmp_path: Path, database: str | None
) -> None:
    repo = repository(tmp_path / "repo")
    scratch = tmp_path / "scratch"
    settings = {**SETTINGS, "workers": {"scratch_dir": scratch}}
    receiver = Receiver()
    server = ServerProcess(tmp_path / "data", repo, database, **settings)
    try:
        alice = member(server.http, "alice")
        receiver.secret = server.http.get("/api/v1/webhooks/secret", headers=alice).json()[
            "secret"]  # fmt: skip
        ids: dict[str, int] = {}
        for n in range(JOBS):
            r = server.http.post("/api/v1/predictions", headers=alice, json={
                "model": "count", "input": body(n, 0.1), "webhook": receiver.url})  # fmt: skip
            assert r.status_code == 202, r.text
            ids[r.json()["id"]] = n
        deadline = time.monotonic() + 60
        while len(receiver.seen) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_at = time.time()
        server.kill()  # mid-way: jobs running, others queued, deliveries pending
        assert 0 < len(receiver.seen) < JOBS
    finally:
        server.kill()
    server = ServerProcess(tmp_path / "data", repo, database, **settings)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            jobs = server.http.get("/api/v1/predictions?limit=1000", headers=alice).json()
            if all(j["status"] in ("succeeded", "failed") for j in jobs) and (
                    len(receiver.seen) == JOBS):  # fmt: skip
                break
            time.sleep(0.2)
        jobs = {j["id"]: j for j in server.http.get("/api/v1/predictions?limit=1000",
                                                    headers=alice).json()}  # fmt: skip
        runs = executions(scratch)
    finally:
        server.stop()
        receiver.close()
    assert set(jobs) == set(ids)  # none lost
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded" or (job["status"] == "failed" and job["error"]), job
        if job["status"] == "succeeded":
            assert job["result"]["outputs"][0]["data"] == [2.0 * ids[job_id]]
        assert 1 <= job["attempts"] <= 3, job
    # never two executions of one job at once (an execution cut by the kill ends at the kill)
    for n, tries in runs.items():
        spans = sorted((start, end or killed_at) for _, start, end in tries)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"job {n} ran twice at once: {tries}"
    assert sorted(runs) == list(range(JOBS))
    # every delivery verified; each job's completion seen, with one webhook id per delivery
    assert receiver.bad == []
    assert set(receiver.seen) == set(ids)
    for job_id, wids in receiver.seen.items():
        assert len(set(wids)) == 1, (job_id, wids)  # its retries kept the id
        if job_id in receiver.refused:
            assert len(wids) >= 2, (job_id, wids)  # refused once, then retried
    assert len(receiver.refused) >= JOBS // 5 - 1
    assert all(e["type"] == "prediction.completed" for e in receiver.events)


def test_two_nodes_share_one_queue(tmp_path: Path, postgres_url: str) -> None:
    """Jobs submitted to one node of two (one PostgreSQL): each runs once; the node that
    takes none (`concurrency: 0`) leaves them to the other, which polls only every 30 s and
    still starts each within a second: NOTIFY woke it."""
    repo = repository(tmp_path / "repo")
    scratch = {"scratch_dir": tmp_path / "scratch"}
    front = Platform(tmp_path / "front", postgres_url, model_repository=repo,
                     jobs={"concurrency": 0}, workers=scratch)  # fmt: skip
    back = Platform(tmp_path / "back", postgres_url, model_repository=repo,
                    jobs={"concurrency": 2, "poll_interval_s": 30}, workers=scratch)  # fmt: skip
    front.start()
    back.start()
    try:
        alice = front.user("alice")
        waits = []
        for n in range(5):
            job = front.http.post(
                "/api/v1/predictions", headers=alice, json={"model": "count", "input": body(n, 0)}
            ).json()
            deadline = time.monotonic() + 10
            while job["status"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.02)
                job = front.http.get(f"/api/v1/predictions/{job['id']}", headers=alice).json()
            assert job["status"] == "succeeded", job
            started = datetime.fromisoformat(job["started_at"])
            waits.append((started - datetime.fromisoformat(job["created_at"])).total_seconds())
        assert max(waits) <= 1, waits
        # now both take jobs: 40 submitted to one of them, each runs exactly once
        front.stop()
        front = Platform(tmp_path / "front", postgres_url, model_repository=repo,
                         jobs={"concurrency": 2, "poll_interval_s": 0.2},
                         workers=scratch)  # fmt: skip
        front.start()
        ids = [front.http.post("/api/v1/predictions", headers=alice, json={
            "model": "count", "input": body(n, 0.05)}).json()["id"]
            for n in range(100, 140)]  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [front.http.get(f"/api/v1/predictions/{i}", headers=alice).json()["status"]
                      for i in ids]  # fmt: skip
            if all(s == "succeeded" for s in states):
                break
            time.sleep(0.2)
        assert all(s == "succeeded" for s in states), states
        runs = executions(tmp_path / "scratch")
    finally:
        front.stop()
        back.stop()
    assert sorted(n for n in runs if n >= 100) == list(range(100, 140))
    assert all(len(runs[n]) == 1 for n in range(100, 140)), {n: runs[n] for n in runs}
    assert all(len(runs[n]) == 1 for n in range(5))
    print(json.dumps({"wake_s": waits}))
