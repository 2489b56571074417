"""The worker's own cost per INFER frame, in process: no server, no socket wait, no model.

30,000 INFER frames (one FP32 [1, 64] tensor) are read from a buffer by the tree's own frame
reader, unpacked, answered by an identity "model", packed and written back to a socket that a
thread drains: the Python the worker runs per request, and nothing else. Run it once per source
tree to compare two versions of the worker loop (the import path picks the tree):

    PYTHONPATH=/tmp/base/src .venv/bin/python bench/worker_frames.py
    PYTHONPATH=/tmp/new/src .venv/bin/python bench/worker_frames.py

Trees whose protocol has no `Kind` (before the typed frames) run the loop the worker had then.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Any

import numpy as np

import inferd.workers.protocol as P

N = 30_000


def main() -> None:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    typed = hasattr(P, "Kind")
    bufs: list[Any] = []
    metas = P.pack_tensors({"input": x}, None, bufs)
    body = {"inputs": metas, "outputs": None, "parameters": {}}
    if typed:
        pieces = P.encode_frame(P.Kind.INFER, "0123456789abcdef", body, bufs)
    else:
        pieces = P.encode_frame({"op": "infer", **body}, bufs)  # type: ignore[call-arg,arg-type]
    frame = b"".join(bytes(p) for p in pieces)
    server, worker = socket.socketpair()

    def drain() -> None:
        while server.recv(1 << 20):
            pass

    threading.Thread(target=drain, daemon=True).start()
    stream = io.BufferedReader(io.BytesIO(frame * N), 1 << 16)  # type: ignore[arg-type]
    start = time.perf_counter()
    if typed:
        from inferd.workers.worker_loop import WorkerLoop

        class Identity:
            def infer(self, inputs: Any, outputs: Any, parameters: Any) -> Any:
                return inputs

        loop = WorkerLoop(worker, None, None, [])
        loop.runtime = Identity()  # type: ignore[assignment]
        for _ in range(N):
            f = loop._next_frame(stream)  # type: ignore[arg-type]
            assert f is not None
            loop._infer(f)
    else:
        for _ in range(N):
            header, buffers = P.read_frame_sync(stream)  # type: ignore[misc]
            inputs = P.unpack_tensors(header["inputs"], buffers, None)  # type: ignore[call-overload]
            t = time.perf_counter_ns()
            compute = time.perf_counter_ns() - t
            out: list[Any] = []
            m = P.pack_tensors(inputs, None, out)
            P.write_frame_sync(worker, {"ok": True, "outputs": m, "compute_ns": compute}, out)  # type: ignore[call-arg,arg-type]
    took = time.perf_counter() - start
    print(f"{'typed frames' if typed else 'op frames'}: {took / N * 1e6:.2f} µs per request")


if __name__ == "__main__":
    main()
