"""What a traffic split costs per request: one deployment with one revision against one with a
90/10 split over two, both on one server, called alternately round by round.

An in-thread inferd with its registry in a scratch folder; the model is a small skops
classifier uploaded twice (versions 1 and 2) under two names. `plain` is deployed on version 1
alone, `split` with 90/10 over versions 1 and 2. Each round sends `--requests` sequential V2
REST calls per deployment from `--concurrency` threads (keep-alive httpx clients) and keeps the
median latency; the table gives the medians over the rounds and their difference.

    .venv/bin/python bench/traffic.py --rounds 7 --requests 2000
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ADMIN_KEY = "inferd_BenchAdm_" + "b" * 43
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _artifact() -> tuple[bytes, dict[str, Any]]:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=300).fit(x, y)
    sample = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                          "data": x[:1].astype(np.float32).ravel().tolist()}]}  # fmt: skip
    return sio.dumps(clf), sample


def _setup(http: httpx.Client, artifact: bytes, sample: dict[str, Any]) -> None:
    for name in ("plain", "split"):
        r = http.post("/api/v1/models", headers=ADMIN, json={"name": name, "visibility": "public"})
        assert r.status_code == 201, r.text
        for _ in range(2):
            files = {"file": ("m.skops", io.BytesIO(artifact), "application/octet-stream")}
            meta = {"meta": orjson.dumps({"sample_input": sample}).decode()}
            r = http.post(f"/api/v1/models/{name}/versions", headers=ADMIN, files=files, data=meta)
            assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    bodies = {"plain": {"model": "plain", "version": 1},
              "split": {"model": "split", "traffic": {"1": 90, "2": 10}}}  # fmt: skip
    for body in bodies.values():
        dep = http.post("/api/v1/deployments", headers=ADMIN, json=body).json()
        deadline = time.monotonic() + 120
        while dep.get("status") == "deploying" and time.monotonic() < deadline:
            time.sleep(0.1)
            dep = http.get(f"/api/v1/deployments/{dep['id']}", headers=ADMIN).json()
        assert dep["status"] == "ready", dep


def _round(url: str, name: str, body: bytes, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        mine = []
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(requests // concurrency):
                t0 = time.perf_counter()
                r = http.post(f"/v2/models/{name}/infer", content=body, headers=headers)
                mine.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,8")
    args = ap.parse_args()
    import os

    from inferd import serve

    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-traffic-"))
    os.environ["INFERD_AUTH__BOOTSTRAP_KEY"] = ADMIN_KEY
    server = serve(http_port=0, block=False, data_dir=scratch, grpc={"enabled": False},
                   log_level="warning", http={"access_log": False})  # fmt: skip
    assert server is not None
    try:
        artifact, sample = _artifact()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            _setup(http, artifact, sample)
        body = orjson.dumps(sample)
        print("| c | one revision p50 (µs) | 90/10 split p50 (µs) | difference (µs) |")
        print("|---|---|---|---|")
        for c in (int(x) for x in args.concurrency.split(",")):
            _round(server.url, "plain", body, 200, c)  # warm-up
            _round(server.url, "split", body, 200, c)
            medians: dict[str, list[float]] = {"plain": [], "split": []}
            for _ in range(args.rounds):
                for name in ("plain", "split"):
                    lat = _round(server.url, name, body, args.requests, c)
                    medians[name].append(statistics.median(lat) * 1e6)
            plain, split = (statistics.median(medians[n]) for n in ("plain", "split"))
            print(f"| {c} | {plain:.0f} | {split:.0f} | {split - plain:+.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
