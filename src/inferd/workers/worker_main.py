"""The worker process: loads one model version (a runtime or an LLM engine) and runs it for the
server, frame by frame.

Started by `WorkerConnection` (for `ProcessReplica` and `ProcessGenerator`) as
`python -m inferd.workers.worker_main FD PLAN` with one end of a Unix socket pair and its
isolation plan (JSON, from `isolation.WorkerIsolation`), which it applies to itself
(`sandbox.enter`) before it reads the first frame: no model code runs before it, and a worker
whose required isolation failed loads nothing. It exits when the server goes away: on EOF, on
the parent-death signal (Linux), or when its parent process changes (checked by a watchdog
thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Only the standard library and the sandbox before the worker isolated itself: namespaces are
# per thread, and numpy (the protocol, the runtimes) starts its BLAS threads when imported.
from inferd.workers import sandbox

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the server dies, and watch the parent pid as a fallback."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def serve(
    sock: socket.socket,
    shm: Path | None = None,
    refused: str | None = None,
    notes: list[str] | None = None,
) -> None:
    """Answer frames until UNLOAD or EOF (`worker_loop.WorkerLoop`: infer and generation
    alike). `refused`: why no model may load here (a LOAD is answered with it); `notes`: what
    isolation the kernel refused, sent with the LOADED answer."""
    from inferd.workers.worker_loop import WorkerLoop

    WorkerLoop(sock, shm, refused, notes or []).serve()


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
    plan: dict[str, Any] = json.loads(argv[2]) if len(argv) > 2 else {}
    refused = None
    notes: list[str] = []
    try:
        notes = sandbox.enter(plan)
    except sandbox.SandboxError as e:
        refused = str(e)
    except Exception as e:  # half set up: no model code may run here
        refused = f"worker isolation failed: {type(e).__name__}: {e}"
    # after the drop: a change of user clears the parent-death signal
    _die_with_parent()
    sock = socket.socket(fileno=int(argv[1]))
    shm = Path(plan["shm"]) if plan.get("shm") else None
    try:
        serve(sock, shm, refused, notes)
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv)
