"""Closed-loop HTTP load generator for a V2 (or V1) REST infer endpoint.

N connections each send the same POST body, wait for the answer, send again (closed loop,
HTTP/1.1 keep-alive), for ``--duration`` seconds after ``--warmup`` seconds that are not
counted. Reports infer/s, p50/p90/p99/mean latency in ms, and the error count.

Engines: ``wrk`` (default when installed; one thread, ``-t1 -cN``, body and percentiles through a
Lua script, so the generator costs a few µs per request) or ``python`` (a pure-asyncio raw
socket client, uvloop when importable; several times more CPU per request than wrk). The
generator pins itself to ``--cpu`` (default 1) so the server under test can own CPU 0.

    python bench/loadgen.py --url http://127.0.0.1:8080/v2/models/mlp/infer \
        --body bench/out/bodies/mlp.v2.json --concurrency 8 --duration 10 --warmup 2 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

WRK_MARK = "LOADGEN_JSON "

# wrk reads the body once per thread (static request: no Lua runs per request) and prints
# exact percentiles from its HdrHistogram (microseconds) in done().
_WRK_LUA = r"""
local f = assert(io.open([==[%(body)s]==], "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%f,' ..
    '"max_us":%%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


@dataclass
class LoadResult:
    """One measured run (warm-up excluded)."""

    engine: str
    url: str
    concurrency: int
    duration_s: float
    requests: int
    infer_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON."""
        return asdict(self)


def have_wrk() -> bool:
    """Whether a ``wrk`` binary is on PATH."""
    return shutil.which("wrk") is not None


def _pin_prefix(cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


def _run_wrk_once(
    url: str, body: Path, concurrency: int, seconds: int, cpu: int | None, timeout_s: int
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(_WRK_LUA % {"body": str(body.resolve()), "mark": WRK_MARK})
    try:
        cmd = [
            *_pin_prefix(cpu),
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            f"--timeout={timeout_s}s",
            "--latency",
            "-s",
            lua.name,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(lua.name)
    for line in proc.stdout.splitlines():
        if line.startswith(WRK_MARK):
            return dict(json.loads(line[len(WRK_MARK) :]))
    raise RuntimeError(f"wrk failed (rc={proc.returncode}): {proc.stderr or proc.stdout}")


def run_wrk(
    url: str,
    body: Path,
    concurrency: int,
    duration: float,
    warmup: float,
    cpu: int | None = 1,
    timeout_s: int = 5,
) -> LoadResult:
    """Drive ``wrk -t1 -cN`` (warm-up as a separate, discarded wrk run)."""
    if warmup > 0:
        _run_wrk_once(url, body, concurrency, max(1, math.ceil(warmup)), cpu, timeout_s)
    r = _run_wrk_once(url, body, concurrency, max(1, math.ceil(duration)), cpu, timeout_s)
    secs = r["duration_us"] / 1e6
    detail = {k: int(r[k]) for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    return LoadResult(
        engine="wrk",
        url=url,
        concurrency=concurrency,
        duration_s=round(secs, 3),
        requests=int(r["requests"]),
        infer_per_s=r["requests"] / secs if secs else 0.0,
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        mean_ms=r["mean_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        errors=sum(detail.values()),
        error_detail=detail,
    )


# --------------------------------------------------------------------------- pure-Python engine


class _Stats:
    """Shared state of the asyncio engine: the measuring window and what landed in it."""

    def __init__(self, t_start: float, t_end: float) -> None:
        self.t_start = t_start
        self.t_end = t_end
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.live = 0
        self.all_closed: asyncio.Future[None] | None = None

    def error(self, kind: str) -> None:
        now = time.perf_counter()
        if self.t_start <= now < self.t_end:
            self.errors[kind] = self.errors.get(kind, 0) + 1


class _Conn(asyncio.Protocol):
    """One keep-alive connection: send, parse one response, send again until the end."""

    def __init__(self, request: bytes, stats: _Stats) -> None:
        self.request = request
        self.stats = stats
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.stats.live += 1
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.t0 = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        body_start = head_end + 4
        if b"transfer-encoding: chunked" in head:
            end = self.buf.find(b"\r\n0\r\n\r\n", body_start - 2)
            if end < 0:
                return
            total = end + 7
        else:
            cl = head.find(b"content-length:")
            length = int(head[cl + 15 :].split(b"\r\n", 1)[0]) if cl >= 0 else 0
            total = body_start + length
            if len(self.buf) < total:
                return
        status = int(head[9:12])
        del self.buf[:total]
        now = time.perf_counter()
        if self.stats.t_start <= now < self.stats.t_end:
            if 200 <= status < 400:
                self.stats.latencies.append(now - self.t0)
            else:
                self.stats.error("status")
        if now < self.stats.t_end:
            self._send()
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.stats.t_end:
            self.stats.error("read")
        self.stats.live -= 1
        fut = self.stats.all_closed
        if self.stats.live == 0 and fut is not None and not fut.done():
            fut.set_result(None)


async def _python_load(
    url: str, body: bytes, concurrency: int, duration: float, warmup: float
) -> _Stats:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    stats = _Stats(now + warmup, now + warmup + duration)
    stats.all_closed = loop.create_future()
    for _ in range(concurrency):
        try:
            await loop.create_connection(lambda: _Conn(request, stats), host, port)
        except OSError:
            stats.errors["connect"] = stats.errors.get("connect", 0) + 1
    if stats.live:
        remaining = stats.t_end - time.perf_counter()
        await asyncio.wait_for(stats.all_closed, timeout=max(remaining, 0) + 10)
    return stats


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_vals:
        return 0.0
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def run_python(
    url: str, body: Path, concurrency: int, duration: float, warmup: float, cpu: int | None = 1
) -> LoadResult:
    """The pure-asyncio fallback engine, in this process (pinned to ``cpu``)."""
    if _pin_prefix(cpu):
        assert cpu is not None
        os.sched_setaffinity(0, {cpu})
    coro = _python_load(url, body.read_bytes(), concurrency, duration, warmup)
    try:
        import uvloop
    except ImportError:
        stats = asyncio.run(coro)
    else:
        stats = uvloop.run(coro)
    lat = sorted(stats.latencies)
    n = len(lat)
    if n == 0 and not stats.errors:
        stats.errors["no_response"] = 1
    return LoadResult(
        engine="python",
        url=url,
        concurrency=concurrency,
        duration_s=duration,
        requests=n,
        infer_per_s=n / duration,
        p50_ms=_percentile(lat, 50) * 1000,
        p90_ms=_percentile(lat, 90) * 1000,
        p99_ms=_percentile(lat, 99) * 1000,
        mean_ms=(sum(lat) / n * 1000) if n else 0.0,
        max_ms=(lat[-1] * 1000) if n else 0.0,
        errors=sum(stats.errors.values()),
        error_detail=stats.errors,
    )


def run_load(
    url: str,
    body: Path,
    concurrency: int,
    duration: float,
    warmup: float = 2.0,
    engine: str = "auto",
    cpu: int | None = 1,
) -> LoadResult:
    """Run one measurement with ``engine`` = ``auto`` (wrk if installed), ``wrk`` or ``python``."""
    if engine == "auto":
        engine = "wrk" if have_wrk() else "python"
    if engine == "wrk":
        return run_wrk(url, body, concurrency, duration, warmup, cpu)
    if engine == "python":
        return run_python(url, body, concurrency, duration, warmup, cpu)
    raise ValueError(f"unknown engine {engine!r}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 1 when any request failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", required=True, help="POST target, e.g. .../v2/models/M/infer")
    ap.add_argument("--body", required=True, type=Path, help="JSON request body file")
    ap.add_argument("--concurrency", "-c", type=int, default=1, help="connections (default 1)")
    ap.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", "-w", type=float, default=2.0, help="unmeasured seconds first")
    ap.add_argument("--engine", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to pin the generator to (-1: none)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    cpu = None if args.cpu < 0 else args.cpu
    res = run_load(
        args.url, args.body, args.concurrency, args.duration, args.warmup, args.engine, cpu
    )
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(
            f"{res.engine} c={res.concurrency} {res.duration_s:.1f}s: "
            f"{res.infer_per_s:,.0f} infer/s  p50 {res.p50_ms:.3f} ms  p90 {res.p90_ms:.3f} ms  "
            f"p99 {res.p99_ms:.3f} ms  mean {res.mean_ms:.3f} ms  errors {res.errors} "
            f"{res.error_detail or ''}"
        )
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
