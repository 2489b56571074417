"""Runtime checks that need a fresh interpreter (a subprocess): which modules importing a
runtime pulls in, that transformers really runs a repository's code when told to (the control
for the refusal tests in tests/unit/test_runtime_transformers.py), and onnxruntime's threads
staying inside the process's CPU set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit import test_runtime_transformers as hf
from tests.unit.test_runtimes import build


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The one model the evil repository is made from: a tiny random BERT classifier."""
    import transformers

    labels = {"id2label": {0: "negative", 1: "neutral", 2: "positive"}}
    model = transformers.BertForSequenceClassification(hf.bert_config(**labels))
    return {"classifier": hf.build(tmp_path_factory.mktemp("hf") / "cls" / "1", model)}


def test_importing_the_runtime_imports_no_framework() -> None:
    code = (
        "import sys, json, inferd.runtimes.transformers, inferd.runtimes.diffusers\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'diffusers', "
        "'sentence_transformers') if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_evil_repository_runs_its_code_when_trusted(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """The control for the tests below: transformers with trust_remote_code=True does run it."""
    canary = tmp_path / "canary"
    path = hf.evil_repo(tmp_path, models, canary, "config")
    code = (
        "import transformers, sys\n"
        "transformers.AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True, "
        "local_files_only=True)"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert canary.read_text() == "custom code ran"


PINNED_ONNX = """
import glob, json, os, sys
os.sched_setaffinity(0, {0})
import numpy as np
from inferd.core.spec import parse_model_config
from inferd.runtimes import runtime_class
from pathlib import Path
runtime = runtime_class("onnx")(parse_model_config("simple", None), "1", Path(sys.argv[1]))
runtime.load()
x = np.ones((1, 16), np.int32)
runtime.infer({"INPUT0": x, "INPUT1": x})
cpus = set()
for status in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
    with open(status) as f:
        cpus.update(line.split()[1] for line in f if line.startswith("Cpus_allowed_list"))
print(json.dumps(sorted(cpus)))
"""


def test_onnx_default_threads_stay_inside_the_process_cpu_set(tmp_path: Path) -> None:
    """onnxruntime's default pool pins threads to every core, escaping taskset / cpusets."""
    import json
    import os
    import subprocess

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a second CPU to show a thread escaping the set")
    version = tmp_path / "1"
    version.mkdir()
    build.build_simple(version / "model.onnx")
    proc = subprocess.run([sys.executable, "-c", PINNED_ONNX, str(version)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["0"]
