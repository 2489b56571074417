"""Async predictions: what a submission costs, and how fast an idle server picks a job up.

1. Submission: `--clients` threads (each its own connection) POST /api/v1/predictions for
   `--duration` seconds against a server that runs no jobs (`jobs.concurrency: 0`, so only the
   submission is timed: authentication, the model lookup, one INSERT into SQLite); latency
   percentiles and submissions per second.
2. Wake-up: one job at a time to an idle server that runs jobs; from each job's own timestamps,
   `started_at - created_at` (queued → running), and the time until the client sees it
   `succeeded` by polling.

The server runs in this process (its registry on SQLite in a scratch folder) on CPU 0; the
submitting clients are threads of this process pinned to CPU 1.

    .venv/bin/python bench/jobs.py --clients 8 --duration 10 --jobs 50
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ADMIN_KEY = "inferd_BenchAdm_" + "b" * 43
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "echo", "input": {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1],
                                               "data": [1.0]}]}}  # fmt: skip


def _repository(root: Path) -> Path:
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "1" / "model.py").write_text(textwrap.dedent("""
        class Model:
            def infer(self, inputs, parameters):
                return {"Y": inputs["X"]}
    """))  # fmt: skip
    (root / "echo" / "model.yaml").write_text(
        "runtime: python\ntrusted: true\n"
        "inputs: [{name: X, datatype: FP32, shape: [-1]}]\n"
        "outputs: [{name: Y, datatype: FP32, shape: [-1]}]\n"
    )
    return root


class _Server:
    """`inferd serve` in its own process pinned to CPU 0 (the clients keep CPU 1)."""

    def __init__(self, scratch: Path, name: str, concurrency: int, src: Path | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "INFERD_DATA_DIR": str(scratch / name / "data"),
               "INFERD_JOBS__CONCURRENCY": str(concurrency),
               "INFERD_AUTH__BOOTSTRAP_KEY": ADMIN_KEY}  # fmt: skip
        if src is not None:  # another inferd's sources (a baseline) ahead of the installed one
            env["PYTHONPATH"] = str(src)
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "inferd.cli.main", "serve",
             "--model-repository", str(_repository(scratch / name / "repo")),
             "--http-port", str(port), "--no-grpc", "--no-access-log", "--log-level", "warning"],
            env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/v2/models/echo/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("inferd did not start")
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _serve(scratch: Path, name: str, concurrency: int, src: Path | None = None) -> _Server:
    return _Server(scratch, name, concurrency, src)


def submissions(url: str, clients: int, duration: float, path: str = "/api/v1/predictions",
                body: dict[str, Any] = BODY, status: int = 202, label: str = "submissions",
                ) -> None:  # fmt: skip
    times: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def client() -> None:
        os.sched_setaffinity(threading.get_native_id(), {1})  # the server has CPU 0
        mine = []
        with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as c:
            for _ in range(20):  # warm-up
                c.post(path, json=body)
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(path, json=body)
                mine.append(time.perf_counter() - t0)
                assert r.status_code == status, r.text
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    ms = np.array(times) * 1000
    p50, p90, p99 = (np.percentile(ms, q) for q in (50, 90, 99))
    rate = len(times) / took
    print(f"| {label}, c={clients} | {rate:,.0f}/s | p50 {p50:.2f} ms | p90 {p90:.2f} ms | "
          f"p99 {p99:.2f} ms |")  # fmt: skip


def wake_up(url: str, jobs: int) -> None:
    started: list[float] = []
    seen: list[float] = []
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as c:
        for _ in range(jobs):
            t0 = time.perf_counter()
            job = c.post("/api/v1/predictions", json=BODY).json()
            while job["status"] not in ("succeeded", "failed"):
                time.sleep(0.002)
                job = c.get(f"/api/v1/predictions/{job['id']}").json()
            seen.append((time.perf_counter() - t0) * 1000)
            assert job["status"] == "succeeded", job
            created = datetime.fromisoformat(job["created_at"])
            begun = datetime.fromisoformat(job["started_at"])
            started.append((begun - created).total_seconds() * 1000)
            time.sleep(0.05)  # idle again before the next one
    print(f"| queued → running (idle server), {jobs} jobs | median "
          f"{statistics.median(started):.1f} ms | max {max(started):.1f} ms |")  # fmt: skip
    print(f"| submitted → seen succeeded by polling every 2 ms | median "
          f"{statistics.median(seen):.1f} ms | max {max(seen):.1f} ms |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another inferd's src/ (e.g. `git archive REV src`): its submissions "
        "at c=--clients are measured in turns with this one's, --rounds times",
    )
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-jobs-"))
    if args.baseline_src is not None:
        for r in range(args.rounds):
            for label, src in (("baseline", args.baseline_src), ("this", None)):
                server = _serve(scratch, f"{label}-{r}", 0, src)
                try:
                    submissions(server.url, args.clients, args.duration,
                                label=f"round {r + 1}, {label}: submissions")  # fmt: skip
                finally:
                    server.stop()
        return
    quiet = _serve(scratch, "submit", 0)
    try:
        for c in sorted({1, args.clients}):
            # the same body answered at once (V2 infer), then queued (interleaved, same server)
            submissions(quiet.url, c, args.duration, "/v2/models/echo/infer", BODY["input"],
                        200, "sync V2 infer")  # fmt: skip
            submissions(quiet.url, c, args.duration)
    finally:
        quiet.stop()
    busy = _serve(scratch, "run", 2)
    try:
        wake_up(busy.url, args.jobs)
    finally:
        busy.stop()


if __name__ == "__main__":
    main()
