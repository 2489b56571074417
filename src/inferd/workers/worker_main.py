"""The worker process: loads one model version and runs it for the server, frame by frame.

Started by `ProcessReplica` as `python -m inferd.workers.worker_main FD PLAN` with one end of a
Unix socket pair and its isolation plan (JSON, from `isolation.WorkerIsolation`), which it applies
to itself (`sandbox.enter`) before it reads the first frame: no model code runs before it, and a
worker whose required isolation failed loads nothing. It exits when the server goes away: on
EOF, on the parent-death signal (Linux), or when its parent process changes (checked by a
watchdog thread).
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
from typing import TYPE_CHECKING, Any, BinaryIO

# Only the standard library and the sandbox before the worker isolated itself: namespaces are
# per thread, and numpy (the protocol, the runtimes) starts its BLAS threads when imported.
from inferd.workers import sandbox

if TYPE_CHECKING:
    from inferd.runtimes.base import Runtime
    from inferd.workers.protocol import Buffer

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


def _error(e: BaseException, loading: bool) -> dict[str, Any]:
    from inferd.core.errors import InferdError

    if isinstance(e, InferdError):
        return {"ok": False, "kind": type(e).__name__, "message": e.message}
    kind = "ModelLoadError" if loading else "ModelExecutionError"
    prefix = "" if loading else "model raised "
    return {"ok": False, "kind": kind, "message": f"{prefix}{type(e).__name__}: {e}"}


def serve(
    sock: socket.socket,
    shm: Path | None = None,
    refused: str | None = None,
    notes: list[str] | None = None,
) -> None:
    """Answer frames until `unload` or EOF. `refused`: why no model may load here (the load is
    answered with it); `notes`: what isolation the kernel refused, sent with the load's answer."""
    from inferd.core.spec import parse_model_config
    from inferd.runtimes import runtime_class
    from inferd.workers.protocol import (
        pack_tensors,
        read_frame_sync,
        shm_available,
        unpack_tensors,
        write_frame_sync,
    )

    runtime: Runtime | None = None
    if not shm_available(shm):
        shm = None
    stream: BinaryIO = sock.makefile("rb", buffering=1 << 16)  # type: ignore[assignment]
    while True:
        try:
            header, buffers = read_frame_sync(stream)
        except (EOFError, ConnectionError, OSError):
            return
        op = header.get("op")
        reply: dict[str, Any]
        out_buffers: list[Buffer] = []
        try:
            if op == "infer" and runtime is not None:
                inputs = unpack_tensors(header["inputs"], buffers, shm)
                start = time.perf_counter_ns()
                outputs = runtime.infer(inputs, header.get("outputs"), header.get("parameters"))
                compute = time.perf_counter_ns() - start
                metas = pack_tensors(outputs, shm, out_buffers)
                reply = {"ok": True, "outputs": metas, "compute_ns": compute}
            elif op == "ping":
                reply = {"ok": True, "pid": os.getpid()}
            elif op in ("load", "load_llm") and refused is not None:
                reply = {"ok": False, "kind": "ModelLoadError", "message": refused}
            elif op == "load":
                spec = parse_model_config(header["name"], header["config"])
                cls = runtime_class(header["runtime"])
                runtime = cls(spec, header["version"], Path(header["path"]))
                # progress frames go out before the request's reply (the server reads them)
                runtime.progress_hook = lambda done, total: write_frame_sync(
                    sock, {"op": "progress", "done": done, "total": total}
                )
                runtime.load()
                inputs_sig, outputs_sig = runtime.signature()
                reply = {
                    "ok": True,
                    "notes": notes or [],
                    "platform": runtime.platform,
                    "inputs": [t.to_dict() | {"optional": t.optional} for t in inputs_sig],
                    "outputs": [t.to_dict() | {"optional": t.optional} for t in outputs_sig],
                }
            elif op == "load_llm":  # a generative replica: the socket becomes multiplexed
                from inferd.workers.generation import engine_factory
                from inferd.workers.generation_worker import serve_generation

                spec = parse_model_config(header["name"], header["config"])
                engine = engine_factory(spec, Path(header["path"]))()
                write_frame_sync(sock, {"ok": True, "platform": "transformers_llm",
                                        "max_model_len": engine.max_model_len,
                                        "notes": notes or []})  # fmt: skip
                serve_generation(sock, stream, engine)
                return
            elif op == "unload":
                if runtime is not None:
                    runtime.unload()
                write_frame_sync(sock, {"ok": True})
                return
            else:
                reply = {"ok": False, "kind": "InvalidInput", "message": f"bad op {op!r}"}
        except BaseException as e:  # reported to the server; the worker keeps serving
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            reply = _error(e, loading=op == "load")
            out_buffers = []
        write_frame_sync(sock, reply, out_buffers)


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
