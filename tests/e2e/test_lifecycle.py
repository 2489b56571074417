"""Lifecycle of `inferd serve`: SIGTERM drains in-flight work; workers never outlive it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.integration.conftest import SLEEPER

YAML = textwrap.dedent(
    """
    runtime: python
    instances: 2
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
)


def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "sleeper" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "sleeper" / "1" / "model.py").write_text(SLEEPER)
    (tmp_path / "repo" / "sleeper" / "model.yaml").write_text(YAML)
    return tmp_path / "repo"


def body(sleep: float) -> dict:
    return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
            "parameters": {"sleep": sleep}}  # fmt: skip


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) is gone for our purposes
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    server = start_server(repo(tmp_path), tmp_path / "log.txt", grpc=False)
    statuses: list[int] = []

    def send() -> None:
        r = httpx.post(f"{server.url}/v2/models/sleeper/infer", json=body(1.5), timeout=30)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
    assert ready.status_code == 503 and "shutting down" in ready.json()["error"]
    refused = httpx.post(f"{server.url}/v2/models/sleeper/infer", json=body(0), timeout=5)
    assert refused.status_code == 503
    for t in threads:
        t.join(30)
    assert statuses == [200, 200, 200, 200]  # 4 requests on 2 replicas: all finished
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 10
    assert "SIGTERM" in server.log.read_text()


def test_killed_server_leaves_no_workers(tmp_path: Path) -> None:
    server = start_server(repo(tmp_path), tmp_path / "log.txt", grpc=False)
    workers = children(server.proc.pid)
    assert len(workers) == 2, workers
    server.proc.kill()
    server.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.1)


def test_first_start_prints_a_working_admin_key_once(
    tmp_path: Path, example_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inferd serve` on an empty data directory makes the admin and prints its key once; the
    key works, and a restart on the same directory prints nothing new."""
    monkeypatch.delenv("INFERD_AUTH__BOOTSTRAP_KEY")
    monkeypatch.setenv("INFERD_DATA_DIR", str(tmp_path / "data"))
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "simple", repo / "simple")
    for attempt in ("first", "second"):
        log = tmp_path / f"{attempt}.log"
        server = start_server(repo, log, grpc=False)
        try:
            keys = re.findall(r"inferd_[A-Za-z0-9]{8}_[A-Za-z0-9]{32,}", log.read_text())
            if attempt == "first":
                assert len(keys) == 1, log.read_text()[-2000:]
                key = keys[0]
            else:
                assert keys == []
            me = httpx.get(f"{server.url}/api/v1/auth/me",
                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert me.status_code == 200 and me.json()["role"] == "admin"
        finally:
            server.proc.terminate()
            server.proc.wait(30)
    assert (tmp_path / "data" / "inferd.db").is_file()
