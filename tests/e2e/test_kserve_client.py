"""The kserve SDK's REST client (v2 protocol) against a running `inferd serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Process


def test_kserve_rest_client(inferd_server: Process) -> None:
    script = Path(__file__).with_name("kserve_client_check.py")
    proc = subprocess.run([sys.executable, str(script), inferd_server.url],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["live"] is True and result["ready"] is True
    assert result["model_ready"] is True and result["missing_ready"] is False
    assert result["predict"] == [0, 2] and result["proba_rows"] == 2
    assert result["predict_binary_in"] == [0, 2]
