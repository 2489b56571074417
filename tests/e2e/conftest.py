"""`inferd serve` as a real subprocess, on a free port, over the example repository plus extras."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

IDENTITY = textwrap.dedent(
    """
    class Model:
        def infer(self, inputs, parameters):
            return {"OUT16": inputs["IN16"], "OUT32": inputs["IN32"]}
    """
)
IDENTITY_YAML = textwrap.dedent(
    """
    runtime: python
    max_batch_size: 4
    inputs:
      - {name: IN16, datatype: FP16, shape: [-1]}
      - {name: IN32, datatype: FP32, shape: [-1]}
    outputs:
      - {name: OUT16, datatype: FP16, shape: [-1]}
      - {name: OUT32, datatype: FP32, shape: [-1]}
    """
)


@dataclass
class Process:
    url: str
    host_port: str
    proc: subprocess.Popen[bytes]
    log: Path
    grpc_host_port: str | None = None  # None when started with grpc=False


def start_server(repo: Path, log: Path, *args: str, grpc: bool = True) -> Process:
    """`inferd serve` on free ports (gRPC too unless `grpc=False`); waits until ready."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    grpc_args = ["--grpc-port", str(grpc_port)] if grpc_port else ["--no-grpc"]
    cmd = [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(repo),
           "--http-port", str(port), *grpc_args, *args]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"inferd exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                grpc_at = f"127.0.0.1:{grpc_port}" if grpc_port else None
                return Process(url, f"127.0.0.1:{port}", proc, log, grpc_at)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"inferd did not become ready:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def e2e_repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-repo")
    for model in example_repo.iterdir():
        if model.is_dir():
            shutil.copytree(model, root / model.name)
    (root / "identity_fp16" / "1").mkdir(parents=True)
    (root / "identity_fp16" / "1" / "model.py").write_text(IDENTITY)
    (root / "identity_fp16" / "model.yaml").write_text(IDENTITY_YAML)
    return root


@pytest.fixture(scope="session")
def inferd_server(e2e_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("logs") / "inferd.log"
    server = start_server(e2e_repo, log)
    yield server
    server.proc.terminate()
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise
    assert server.proc.returncode == 0, log.read_text()[-4000:]
