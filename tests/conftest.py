"""Shared fixtures: the example model repository, built once per session (no downloads)."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"


def _load_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "build_models", ROOT / "examples" / "build_models.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_models"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example_repo() -> Path:
    """examples/models with its binary artifacts built (idempotent)."""
    builder = _load_builder()
    builder.main(["--out", str(EXAMPLES)])
    return EXAMPLES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
