"""Batch jobs against synchronous V2 REST: rows per second through one tabular model, both ways,
interleaved round by round in one run.

One `inferd serve` (pinned to CPU 0 with its workers, its registry on SQLite in a scratch folder)
serves the example iris classifier (`examples/models/iris_sklearn`: a 10-tree random forest,
skops, one process replica) with dynamic batching on (`max_batch_size: 64`,
`dynamic_batching: {max_queue_delay: 500us}`). Each round measures, one after the other:

1. **sync c=8**: closed-loop V2 REST load, 8 connections, one row per request
   (`bench/loadgen.py`, pinned to CPU 1), for `--duration` seconds: infer/s = rows/s;
2. **batch CSV**: a `--rows`-row CSV submitted to `POST /api/v1/batch-jobs` (rows go to the
   model `batches.rows_per_request` = 64 at a time, the model's `max_batch_size`), timed from
   the upload until a client polling every 20 ms sees it `completed`;
3. **batch JSONL** (`--jsonl`): the same rows as a JSONL file of one-row V2 bodies (one request
   per row, up to `batches.max_in_flight` = 64 in flight, merged by the model's dynamic
   batching).

Rows per second of each, the median over `--rounds`, and each batch's ratio to sync c=8 (the
bar: a batch job >= 50% of the sync c=8 throughput).

    .venv/bin/python bench/batches.py --rounds 3 --duration 10 --rows 20000 --jsonl
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402

ADMIN_KEY = "inferd_BenchAdm_" + "b" * 43
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL_YAML = """
runtime: sklearn
max_batch_size: 64
dynamic_batching: {max_queue_delay: 500us}
parameters:
  trusted_types: [sklearn.tree._tree.Tree]
"""


def _repository(root: Path) -> Path:
    source = ROOT / "examples" / "models" / "iris_sklearn" / "1" / "model.skops"
    if not source.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_models.py")], check=True)
    (root / "iris" / "1").mkdir(parents=True)
    shutil.copy(source, root / "iris" / "1" / "model.skops")
    (root / "iris" / "model.yaml").write_text(MODEL_YAML)
    return root


def _serve(scratch: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "INFERD_DATA_DIR": str(scratch / "data"),
           "INFERD_AUTH__BOOTSTRAP_KEY": ADMIN_KEY}  # fmt: skip
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "inferd.cli.main", "serve",
           "--model-repository", str(_repository(scratch / "repo")), "--http-port", str(port),
           "--no-grpc", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    log = (scratch / "inferd.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError((scratch / "inferd.log").read_text()[-3000:])


def _rows(n: int) -> np.ndarray:
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    reps = x[rng.integers(0, len(x), n)]
    return (reps + rng.normal(0, 0.05, reps.shape)).astype(np.float32)


def _csv(x: np.ndarray) -> bytes:
    buf = io.StringIO()
    buf.write("sepal_length,sepal_width,petal_length,petal_width\n")
    np.savetxt(buf, x, delimiter=",", fmt="%.4f")
    return buf.getvalue().encode()


def _jsonl(x: np.ndarray) -> bytes:
    import orjson

    return b"\n".join(orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                                "shape": [1, 4], "data": row.tolist()}]})
                      for row in x)  # fmt: skip


def _batch(url: str, data: bytes, name: str) -> dict[str, Any]:
    """Submits one batch job and waits for it; rows/s from upload to `completed`."""
    with httpx.Client(base_url=url, headers=ADMIN, timeout=300) as c:
        t0 = time.perf_counter()
        r = c.post("/api/v1/batch-jobs", files={"file": (name, data)}, data={"model": "iris"})
        assert r.status_code == 201, r.text
        job = r.json()
        while job["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.02)
            job = c.get(f"/api/v1/batch-jobs/{job['id']}").json()
        took = time.perf_counter() - t0
    p = job["progress"]
    assert job["status"] == "completed" and p["failed"] == 0, job
    return {"rows_per_s": p["total"] / took, "server_rows_per_s": p["rows_per_s"], "s": took}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of sync load a round")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rows", type=int, default=20_000, help="rows of each batch job")
    ap.add_argument("--jsonl", action="store_true", help="also a JSONL job of one-row requests")
    ap.add_argument("--port", type=int, default=18500)
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-batches-"))
    os.sched_setaffinity(0, {1})  # this process (clients, load) on CPU 1
    proc = _serve(scratch, args.port)
    url = f"http://127.0.0.1:{args.port}"
    x = _rows(args.rows)
    csv, jsonl = _csv(x), _jsonl(x)
    body = scratch / "row.json"
    body.write_bytes(jsonl.split(b"\n", 1)[0])
    results: dict[str, list[float]] = {"sync": [], "csv": [], "jsonl": []}
    try:
        _batch(url, _csv(x[:500]), "warmup.csv")  # loads the model, warms the runner
        for r in range(args.rounds):
            sync = loadgen.run_load(f"{url}/v2/models/iris/infer", body, 8, args.duration,
                                    args.warmup, engine="python", cpu=1)  # fmt: skip
            assert sync.errors == 0, sync
            results["sync"].append(sync.infer_per_s)
            line = f"round {r + 1}: sync c=8 {sync.infer_per_s:,.0f} rows/s"
            for kind, data in (("csv", csv), ("jsonl", jsonl)):
                if kind == "jsonl" and not args.jsonl:
                    continue
                out = _batch(url, data, f"rows.{kind}")
                results[kind].append(out["rows_per_s"])
                line += (f"; batch {kind} {out['rows_per_s']:,.0f} rows/s "
                         f"(server {out['server_rows_per_s']:,.0f})")  # fmt: skip
            print(line, flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(scratch, ignore_errors=True)
    sync_median = statistics.median(results["sync"])
    print(f"\nmedians over {args.rounds} rounds ({args.rows} rows a job):")
    print(f"  sync V2 REST c=8, one row a request: {sync_median:,.0f} rows/s")
    for kind in ("csv", "jsonl"):
        if results[kind]:
            m = statistics.median(results[kind])
            print(f"  batch job, {kind}: {m:,.0f} rows/s = {m / sync_median:.0%} of sync c=8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
