"""A real inferd app on a real socket (in this process, on a thread), over a scratch repository."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from inferd import serve
from inferd.core.datatypes import DATATYPES
from inferd.runner import RunningServer

RAISER = textwrap.dedent(
    """
    import numpy as np

    class Model:
        def infer(self, inputs, parameters):
            x = inputs["X"]
            if (x < 0).any():
                raise ValueError("boom: negative input")
            if parameters.get("nan"):
                x = x.copy(); x[0] = np.nan; x[-1] = np.inf
            return {"Y": x * 2}
    """
)
RAISER_YAML = textwrap.dedent(
    """
    runtime: python
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
)


SLEEPER = textwrap.dedent(
    """
    import time

    class Model:
        def infer(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            return {"Y": inputs["X"] + 1}
    """
)
SLEEPER_YAML = textwrap.dedent(
    """
    runtime: python
    max_queue_size: 1
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
)


class Identity:
    """Returns its one input as its one output (every datatype)."""

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, Any]:
        return {"OUT": inputs["IN"]}


def identity_models() -> dict[str, Any]:
    return {
        f"identity_{dt.lower()}": {
            "model": Identity(),
            "inputs": [{"name": "IN", "datatype": dt, "shape": [-1, -1]}],
            "outputs": [{"name": "OUT", "datatype": dt, "shape": [-1, -1]}],
            "required": False,
        }
        for dt in sorted(DATATYPES)
    }


@pytest.fixture(scope="session")
def scratch_repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in ("simple", "simple_string", "iris_onnx", "iris_sklearn"):
        shutil.copytree(example_repo / name, root / name)
    (root / "raiser" / "1").mkdir(parents=True)
    (root / "raiser" / "1" / "model.py").write_text(RAISER)
    (root / "raiser" / "model.yaml").write_text(RAISER_YAML)
    (root / "sleeper" / "1").mkdir(parents=True)
    (root / "sleeper" / "1" / "model.py").write_text(SLEEPER)
    (root / "sleeper" / "model.yaml").write_text(SLEEPER_YAML)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (root / "broken" / "model.yaml").write_text("required: false\n")
    return root


@pytest.fixture(scope="session")
def server(scratch_repo: Path) -> Iterator[RunningServer]:
    running = serve(
        model_repository=scratch_repo,
        models=identity_models(),
        http_port=0,
        block=False,
        http={"max_body_bytes": 1024 * 1024},
        grpc={"port": 0},
    )
    assert running is not None
    with running:
        yield running


@pytest.fixture()
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
