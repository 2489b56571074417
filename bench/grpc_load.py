"""Closed-loop gRPC load generator for ``inference.GRPCInferenceService/ModelInfer``.

N connections each send the same prebuilt ``ModelInferRequest`` (bytes from
``bench/models.py``: ``bench/out/bodies/<m>.grpc.bin``), wait for the answer, send again, for
``--duration`` seconds after a discarded ``--warmup`` run. Reports infer/s, p50/p90/p99/mean
latency, errors, and the generator's own CPU time per request (so its ceiling can be judged:
``1e6 / gen_cpu_us_per_req`` requests per second of its one core).

Engines:

- ``h2load`` (nghttp2-client, Debian package; default when installed): C, one thread,
  ``-c N -m 1`` (N HTTP/2 connections, one stream in flight on each), the gRPC frame as the POST
  body with ``content-type: application/grpc``; per-request latencies from its ``--log-file``.
  h2load cannot read gRPC trailers, so a gRPC error (HTTP 200 + ``grpc-status`` != 0, no DATA)
  is counted from the DATA bytes: every good answer carries exactly ``--response-bytes`` bytes
  of DATA, so ``done - data / response_bytes`` requests had none (``grpc_status`` in the error
  detail; the last in-flight answers make this exact to within N).
- ``python``: ``grpc.aio`` (grpcio's C core) with one channel per connection (local subchannel
  pools, so N real HTTP/2 connections), a generic unary-unary call that sends the prebuilt bytes
  and returns raw bytes (no protobuf work per request), each status checked. Several times more
  CPU per request than h2load.

The generator pins itself (or h2load) to ``--cpu`` (default 1).

    .venv/bin/python bench/grpc_load.py --port 18001 --request bench/out/bodies/mlp.grpc.bin \
        --concurrency 8 --duration 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import LoadResult, _percentile, _pin_prefix  # noqa: E402

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class GrpcLoadResult(LoadResult):
    """A LoadResult plus what the generator itself cost."""

    gen_cpu_us_per_req: float = 0.0


def have_h2load() -> bool:
    """Whether nghttp2's ``h2load`` is on PATH."""
    return shutil.which("h2load") is not None


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\0" + struct.pack(">I", len(message)) + message


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _h2load_once(
    port: int, body: Path, concurrency: int, seconds: int, cpu: int | None, log: Path | None
) -> tuple[str, float]:
    cmd = [*_pin_prefix(cpu), "h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{seconds}"]
    cmd += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if log is not None:
        cmd += ["--log-file", str(log)]
    cmd.append(f"http://127.0.0.1:{port}{MODEL_INFER}")
    cpu0 = _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    used = _children_cpu() - cpu0
    if proc.returncode != 0 or "requests:" not in proc.stdout:
        raise RuntimeError(f"h2load failed (rc={proc.returncode}): {proc.stderr or proc.stdout}")
    return proc.stdout, used


def run_h2load(
    port: int,
    request: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    cpu: int | None = 1,
    response_bytes: int = 0,
) -> GrpcLoadResult:
    """``h2load -c N -m 1`` (warm-up as a separate, discarded run)."""
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "request.grpc"
        body.write_bytes(frame(request))
        if warmup > 0:
            _h2load_once(port, body, concurrency, max(1, math.ceil(warmup)), cpu, None)
        log = Path(tmp) / "requests.log"
        out, used = _h2load_once(port, body, concurrency, max(1, math.ceil(duration)), cpu, log)
        lines = [ln.split("\t") for ln in log.read_text().splitlines() if ln.strip()]
    m = re.search(r"finished in ([\d.]+)(m?s)", out)
    secs = float(m.group(1)) / (1000 if m and m.group(2) == "ms" else 1) if m else duration
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)  # fmt: skip
    data = re.search(r"\((\d+)\) data", out)
    if req is None or data is None:
        raise RuntimeError(f"cannot parse h2load output: {out[-800:]}")
    done, failed, errored, timeout = (int(req.group(i)) for i in (3, 5, 6, 7))
    detail = {"http_failed": failed, "errored": errored, "timeout": timeout}
    if response_bytes > 0:  # answers without DATA: a gRPC status other than OK
        missing = done - int(data.group(1)) / (response_bytes + 5)
        detail["grpc_status"] = max(0, round(missing)) if missing > concurrency else 0
    detail = {k: v for k, v in detail.items() if v}
    lat = sorted(int(p[2]) / 1e6 for p in lines if len(p) == 3 and p[1] == "200")
    n = done - sum(detail.values())
    return _result("h2load", port, concurrency, secs, n, lat, detail, used)


def _result(
    engine: str,
    port: int,
    concurrency: int,
    secs: float,
    ok: int,
    lat: list[float],
    detail: dict[str, int],
    cpu_s: float,
) -> GrpcLoadResult:
    total = ok + sum(detail.values())
    return GrpcLoadResult(
        engine=engine,
        url=f"grpc://127.0.0.1:{port}{MODEL_INFER}",
        concurrency=concurrency,
        duration_s=round(secs, 3),
        requests=ok,
        infer_per_s=ok / secs if secs else 0.0,
        p50_ms=_percentile(lat, 50) * 1000,
        p90_ms=_percentile(lat, 90) * 1000,
        p99_ms=_percentile(lat, 99) * 1000,
        mean_ms=(sum(lat) / len(lat) * 1000) if lat else 0.0,
        max_ms=(lat[-1] * 1000) if lat else 0.0,
        errors=sum(detail.values()),
        error_detail=detail,
        gen_cpu_us_per_req=round(cpu_s / total * 1e6, 2) if total else 0.0,
    )


# --------------------------------------------------------------------------- grpc.aio engine


async def _aio_load(
    port: int, request: bytes, concurrency: int, duration: float, warmup: float
) -> tuple[list[float], dict[str, int]]:
    import grpc

    opts = [("grpc.use_local_subchannel_pool", 1)]  # one real connection per channel
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) for _ in range(concurrency)
    ]
    lat: list[float] = []
    errors: dict[str, int] = {}
    now = time.perf_counter()
    t_start, t_end = now + warmup, now + warmup + duration

    async def loop(channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(MODEL_INFER)  # no (de)serializer: bytes in, bytes out
        while (t0 := time.perf_counter()) < t_end:
            try:
                await call(request, timeout=10)
                code = ""
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            t1 = time.perf_counter()
            if t_start <= t1 < t_end:
                if code:
                    errors[code] = errors.get(code, 0) + 1
                else:
                    lat.append(t1 - t0)

    try:
        await asyncio.gather(*(loop(ch) for ch in channels))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return lat, errors


def run_python(
    port: int, request: bytes, concurrency: int, duration: float, warmup: float, cpu: int | None
) -> GrpcLoadResult:
    """The grpc.aio engine in this process (pinned to ``cpu``)."""
    if cpu is not None and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})
    cpu0 = time.process_time()
    lat, errors = asyncio.run(_aio_load(port, request, concurrency, duration, warmup))
    used = time.process_time() - cpu0
    lat.sort()
    # process_time covers the warm-up too: scale to the measured share of the requests
    share = duration / (duration + warmup) if duration + warmup else 1.0
    return _result("python", port, concurrency, duration, len(lat), lat, errors, used * share)


def run_grpc_load(
    port: int,
    request: Path,
    concurrency: int,
    duration: float,
    warmup: float = 2.0,
    engine: str = "auto",
    cpu: int | None = 1,
    response_bytes: int = 0,
) -> GrpcLoadResult:
    """One measurement; ``engine`` = ``auto`` (h2load if installed), ``h2load`` or ``python``
    (run in a child process pinned to ``cpu``, as a separate program would be)."""
    if engine == "auto":
        engine = "h2load" if have_h2load() else "python"
    if engine == "h2load":
        msg = request.read_bytes()
        return run_h2load(port, msg, concurrency, duration, warmup, cpu, response_bytes)
    if engine != "python":
        raise ValueError(f"unknown engine {engine!r}")
    cmd = [sys.executable, __file__, "--engine", "python", "--port", str(port)]
    cmd += ["--request", str(request), "--concurrency", str(concurrency)]
    cmd += ["--duration", str(duration), "--warmup", str(warmup), "--json"]
    cmd += ["--cpu", str(-1 if cpu is None else cpu)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"python gRPC engine failed: {proc.stderr[-800:]}")
    return GrpcLoadResult(**json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 1 when any request failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="gRPC port on 127.0.0.1")
    ap.add_argument("--request", type=Path, required=True, help="serialized ModelInferRequest")
    ap.add_argument("--concurrency", "-c", type=int, default=1)
    ap.add_argument("--duration", "-d", type=float, default=10.0)
    ap.add_argument("--warmup", "-w", type=float, default=2.0)
    ap.add_argument("--engine", choices=["auto", "h2load", "python"], default="auto")
    ap.add_argument("--cpu", type=int, default=1, help="CPU for the generator (-1: none)")
    ap.add_argument(
        "--response-bytes",
        type=int,
        default=0,
        help="size of one good serialized answer (h2load: counts gRPC errors; 0: don't)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    cpu = None if args.cpu < 0 else args.cpu
    if args.engine == "python":  # in this process (run_grpc_load starts it this way)
        res = run_python(
            args.port, args.request.read_bytes(), args.concurrency, args.duration, args.warmup, cpu
        )
    else:
        res = run_grpc_load(
            args.port,
            args.request,
            args.concurrency,
            args.duration,
            args.warmup,
            args.engine,
            cpu,
            args.response_bytes,
        )
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(
            f"{res.engine} c={res.concurrency} {res.duration_s:.1f}s: "
            f"{res.infer_per_s:,.0f} infer/s  p50 {res.p50_ms:.3f} ms  p99 {res.p99_ms:.3f} ms  "
            f"errors {res.errors} {res.error_detail or ''}  "
            f"generator {res.gen_cpu_us_per_req:.1f} CPU µs/request"
        )
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
