"""Design rules checked by tests: layering (import-linter) and lazy framework imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ["onnxruntime", "onnx", "sklearn", "skops", "xgboost", "lightgbm", "torch"]


def test_import_layers_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is part of the dev install"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_runtime_modules_do_not_import_frameworks() -> None:
    code = (
        "import sys, json, inferd.runtimes as r\n"
        "for name in r.RUNTIMES: r.runtime_class(name)\n"
        "import inferd.app\n"
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
