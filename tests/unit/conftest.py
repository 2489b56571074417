"""The unit tier runs in-process: no sockets to other processes, no subprocesses. A test that
needs either belongs in tests/integration (DESIGN.md, house rule 10); this guard makes a slip
fail at once instead of slowing the tier down."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"unit tests run in-process: {what} belongs in tests/integration")

    return refuse


@pytest.fixture(autouse=True)
def _in_process_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # socketpair() (the in-memory transports' twin) neither binds nor connects
    monkeypatch.setattr(socket.socket, "connect", _refuse("a network connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("a network connection"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("a listening socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess"))
    yield
