"""The parsers under bounded fuzzing, as part of the normal test run.

Two tests per target (`fuzz_<target>.py`, corpus `corpus/<target>/`):
- every corpus input replayed in-process through the target: the seeds and the regression
  inputs of bugs already fixed must keep passing (no atheris needed);
- a short coverage-guided atheris run, in a subprocess (atheris.Fuzz() exits the process) on a
  copy of the corpus (the repository's corpus never changes in CI), with a fixed seed, a run
  count and a time cap. A crash fails the test and shows the input in hex.
Longer runs by hand: tests/fuzz/README.md.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))
#: Mutations per target after the corpus; the time cap keeps a slow machine within budget.
RUNS = int(os.environ.get("FUZZ_RUNS", "3000"))
SECONDS = int(os.environ.get("FUZZ_SECONDS", "5"))

pytestmark = pytest.mark.fuzz


def _show(data: bytes) -> str:
    shown = data[:2048].hex()
    return shown + (f"... ({len(data)} bytes)" if len(data) > 2048 else f" ({len(data)} bytes)")


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_cleanly(target: str) -> None:
    module = importlib.import_module(f"fuzz_{target}")
    inputs = sorted((CORPUS / target).iterdir())
    assert inputs, f"no corpus for {target}: run tests/fuzz/make_corpus.py"
    for path in inputs:
        data = path.read_bytes()
        try:
            module.test_one_input(data)
        except BaseException:  # MemoryError and RecursionError are findings too
            pytest.fail(
                f"{target}: corpus input {path.name} fails\n  input: {_show(data)}\n"
                + traceback.format_exc(),
                pytrace=False,
            )


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_bounded_run(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the dev extras (Linux wheels)")
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS / target, corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [
        sys.executable,
        str(HERE / f"fuzz_{target}.py"),
        str(corpus),
        f"-runs={RUNS}",
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-timeout=10",  # seconds for one input: longer is a hang
        "-rss_limit_mb=2048",
        "-max_len=8192",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    dictionary = HERE / f"{target}.dict"
    if dictionary.exists():
        cmd.append(f"-dict={dictionary}")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=SECONDS + 120, cwd=HERE
    )
    found = sorted(artifacts.iterdir())
    if proc.returncode or found:
        shown = "\n".join(f"  {p.name}: {_show(p.read_bytes())}" for p in found)
        pytest.fail(
            f"{target}: fuzzing found a failing input (exit {proc.returncode})\n{shown}\n"
            f"reproduce: {sys.executable} {HERE / f'fuzz_{target}.py'} <input file>\n"
            + proc.stderr[-6000:],
            pytrace=False,
        )
