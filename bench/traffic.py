"""What routing costs per request, measured with wrk from the other core: one server (this
process, pinned to CPU 0, its workers too) serving four deployments of the same small skops
classifier, called point by point in turn:

- `plain`: one revision (version 1);
- `split`: 90/10 over versions 1 and 2 (the routing step: one draw and a bisection);
- `split100`: 100/0 over versions 1 and 2: the same routing step, with the answering done by one
  revision's worker as in `plain` (so the difference is the routing, not a second process);
- `guarded`: version 1 with a routing policy (a header rule that never matches, a fallback, a
  circuit breaker): the path every request of a deployment with a policy takes;
- `shadowed`: version 1 answering, version 2 (weight 0) shadowing 100 % of the requests.

Each point is `--duration` seconds of wrk at each concurrency (after its own discarded warm-up
run); the table gives the medians over `--rounds` rounds and each deployment's difference from
`plain`: infer/s, p50 latency, and the CPU time of the server process per request (its threads,
not its workers: where a routing step's cost lands, far less noisy than latency on a shared
core). A second table times the routing step alone, in process: `DataPlane.version` for each
deployment, the call every protocol makes once per request.

    .venv/bin/python bench/traffic.py --rounds 5 --duration 4
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
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


DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "plain": {"version": 1},
    "split": {"traffic": {"1": 90, "2": 10}},
    "split100": {"traffic": {"1": 100, "2": 0}},
    "guarded": {"traffic": {"1": 100, "2": 0},
                "routing": {"rules": [{"header": "x-never", "value": "x", "version": 2}],
                            "fallbacks": [{"version": 2}], "circuit_breaker": {"failures": 5}}},
    "shadowed": {"traffic": {"1": 100, "2": 0}, "routing": {"shadow": {"version": 2}}},
}  # fmt: skip


def _setup(http: httpx.Client, artifact: bytes, sample: dict[str, Any]) -> None:
    for name, body in DEPLOYMENTS.items():
        r = http.post("/api/v1/models", headers=ADMIN, json={"name": name, "visibility": "public"})
        assert r.status_code == 201, r.text
        for _ in range(2):
            files = {"file": ("m.skops", io.BytesIO(artifact), "application/octet-stream")}
            meta = {"meta": orjson.dumps({"sample_input": sample}).decode()}
            r = http.post(f"/api/v1/models/{name}/versions", headers=ADMIN, files=files, data=meta)
            assert r.status_code == 201 and r.json()["status"] == "ready", r.text
        r = http.post("/api/v1/deployments", headers=ADMIN, json={"model": name, **body})
        assert r.status_code == 201, r.text
        dep = r.json()
        deadline = time.monotonic() + 120
        while dep.get("status") == "deploying" and time.monotonic() < deadline:
            time.sleep(0.1)
            dep = http.get(f"/api/v1/deployments/{dep['id']}", headers=ADMIN).json()
        assert dep["status"] == "ready", dep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--concurrency", default="1,8")
    args = ap.parse_args()
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import loadgen

    from inferd import serve

    os.sched_setaffinity(0, {0})  # the server and its workers on CPU 0, wrk on CPU 1
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-traffic-"))
    os.environ["INFERD_AUTH__BOOTSTRAP_KEY"] = ADMIN_KEY
    server = serve(http_port=0, block=False, data_dir=scratch, grpc={"enabled": False},
                   log_level="warning", http={"access_log": False})  # fmt: skip
    assert server is not None
    try:
        artifact, sample = _artifact()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            _setup(http, artifact, sample)
        body = scratch / "request.json"
        body.write_bytes(orjson.dumps(sample))
        concs = [int(x) for x in args.concurrency.split(",")]
        p50: dict[tuple[str, int], list[float]] = {}
        rate: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for i in range(args.rounds):
            for c in concs:
                for name in DEPLOYMENTS:
                    url = f"{server.url}/v2/models/{name}/infer"
                    loadgen.run_load(url, body, c, 2.0 if i == 0 else 0.5, 0, "wrk", 1)
                    before = os.times()
                    r = loadgen.run_load(url, body, c, args.duration, 0, "wrk", 1)
                    after = os.times()
                    assert r.errors == 0, r
                    used = (after.user - before.user) + (after.system - before.system)
                    p50.setdefault((name, c), []).append(r.p50_ms * 1000)
                    rate.setdefault((name, c), []).append(r.infer_per_s)
                    cpu.setdefault((name, c), []).append(used / max(r.requests, 1) * 1e6)
        print("| deployment | c | infer/s | p50 µs | p50 vs plain (µs) | server CPU µs/req "
              "| CPU vs plain (µs) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for c in concs:
            base = statistics.median(p50[("plain", c)])
            base_cpu = statistics.median(cpu[("plain", c)])
            for name in DEPLOYMENTS:
                mid = statistics.median(p50[(name, c)])
                mid_cpu = statistics.median(cpu[(name, c)])
                print(f"| {name} | {c} | {statistics.median(rate[(name, c)]):,.0f} | "
                      f"{mid:.0f} | {mid - base:+.0f} | {mid_cpu:.0f} | "
                      f"{mid_cpu - base_cpu:+.1f} |")  # fmt: skip
        _routing_step(server.server.asgi.plane, args.rounds)
    finally:
        server.stop()


def _routing_step(plane: Any, rounds: int, calls: int = 200_000) -> None:
    """Time `DataPlane.version` (the routing step) per deployment, interleaved, in process."""
    header = {"x-user": "someone"}.get
    ns: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name in DEPLOYMENTS:
            version = plane.version
            start = time.perf_counter_ns()
            for _ in range(calls):
                version(name, None, header)
            ns.setdefault(name, []).append((time.perf_counter_ns() - start) / calls)
    base = statistics.median(ns["plain"])
    print()
    print("| deployment | routing step ns/call | vs plain (ns) |")
    print("|---|---|---|")
    for name in DEPLOYMENTS:
        mid = statistics.median(ns[name])
        print(f"| {name} | {mid:.0f} | {mid - base:+.0f} |")


if __name__ == "__main__":
    main()
