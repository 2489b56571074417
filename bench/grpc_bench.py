"""gRPC side by side: inferd, Seldon MLServer and KServe, ``ModelInfer``, same models, same run.

Each server is started as in ``bench/run.py`` (pinned to CPU 0, the same model files, one
onnxruntime intra-op thread) with its gRPC listener on (HTTP port + 1): inferd's
``inference.GRPCInferenceService`` (``--grpc-port``), MLServer's (on by default) and KServe's
(``--enable_grpc true``); all three speak the Open Inference Protocol's gRPC messages, which
are Triton's ``inference.*`` messages. One prebuilt ``ModelInferRequest`` per model (one row,
tensor bytes in ``raw_input_contents`` as tritonclient sends them; ``bench/out/bodies/
<m>.grpc.bin``) is checked against the in-process reference over gRPC, then sent in a closed
loop by ``bench/grpc_load.py`` (h2load, or grpc.aio) pinned to CPU 1. ``--servers raw`` adds
``bench/peers/raw_grpc.py`` (fixed answer, no model) to show the ceiling of grpcio + generator.
``inferd-<transport>`` (``inferd-grpcio``; ``inferd-h2`` for the tree measured in
bench/RESULTS.md, given as ``--inferd-src``) is inferd from the same tree as ``inferd`` with
``grpc.transport`` set to ``<transport>``, to compare transports in one run. Each round also
records the server process's CPU time per call (its own, not its model workers').

    .venv/bin/python bench/grpc_bench.py --interleave
    .venv/bin/python bench/grpc_bench.py --servers raw --models mlp --rounds 2 --duration 5
    .venv/bin/python bench/grpc_bench.py --servers inferd,inferd-grpcio --interleave
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import grpc_load  # noqa: E402
import models as model_builder  # noqa: E402
import run  # noqa: E402
import servers  # noqa: E402
from report import NOT_PEERS, render_markdown, summarise  # noqa: E402

#: inferd with another gRPC transport (INFERD_GRPC__TRANSPORT), by server name.
TRANSPORTS = {"inferd-h2": "h2", "inferd-grpcio": "grpcio"}
PORTS = {**run.PORTS, "inferd-h2": 18500, "inferd-grpcio": 18600}  # gRPC listens on each + 1
NOT_PEERS.update(TRANSPORTS)  # inferd itself: not a peer in the summary
_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "BOOL": "?"}
_TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
          "INT32": "int_contents", "BOOL": "bool_contents"}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the same meanings as bench/run.py's)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--servers", default="inferd,mlserver,kserve", help="also: raw, inferd-grpcio, inferd-h2"
    )
    ap.add_argument("--models", default="mlp,iris")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--interleave", action="store_true", help="all servers up, alternate them point by point"
    )
    ap.add_argument("--engine", choices=["auto", "h2load", "python"], default="auto")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--inferd-src", type=Path, default=None)
    ap.add_argument("--inferd-base-src", type=Path, default=None, help="tree of `inferd-base`")
    ap.add_argument("--ort-threads", type=int, default=model_builder.ORT_THREADS)
    ap.add_argument("--mlserver-parallel-workers", type=int, default=0)
    servers.add_batching_options(ap)
    ap.add_argument("--raw-mode", choices=["aio", "sync"], default="aio", help="raw server kind")
    ap.add_argument(
        "--inferd-instance-kind",
        choices=["process", "thread"],
        default="process",
        help="inferd's replicas (default: its own default, a worker process per model)",
    )
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "grpc.json")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--note", default="")
    return ap.parse_args(argv)


def make_spec(name: str, models_root: Path, args: argparse.Namespace) -> servers.ServerSpec:
    """The ServerSpec of ``name`` with its gRPC listener on."""
    port = PORTS[name]
    if name in ("inferd", "inferd-base", *TRANSPORTS):
        repo, note = servers.inferd_variant(models_root, args.inferd_instance_kind, args.batching)
        src = args.inferd_base_src if name == "inferd-base" else args.inferd_src
        if name == "inferd-base" and src is None:
            raise SystemExit("--servers inferd-base needs --inferd-base-src")
        spec = servers.inferd_spec(repo, port, src, port + 1)
        spec.name = name
        spec.config += note
        transport = TRANSPORTS.get(name)
        if transport is not None:
            spec.env["INFERD_GRPC__TRANSPORT"] = transport
            spec.config += f"; grpc.transport {transport}"
        return spec
    if name == "mlserver":
        return servers.mlserver_variant(
            models_root, port, args.mlserver_parallel_workers, args.batching,
            args.mlserver_batch_time,
        )  # fmt: skip
    if name == "kserve":
        return servers.kserve_spec(models_root / "kserve", port, grpc=True)
    if name == "raw":
        argv = [str(servers.MAIN_PY), str(BENCH / "peers" / "raw_grpc.py")]
        argv += ["--port", str(port + 1), "--mode", args.raw_mode]
        config = f"bare grpcio ({args.raw_mode}) server, fixed ModelInfer answer (calibration)"
        spec = servers.ServerSpec("raw", argv, port + 1, config, ("grpc",), python=servers.MAIN_PY)
        spec.grpc_port, spec.check_outputs = port + 1, False
        return spec
    raise SystemExit(f"unknown server {name!r}")


def grpc_call(port: int, method: str, request: bytes, timeout: float = 10) -> bytes:
    """One unary call with raw bytes in and out (raises grpc.RpcError)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        fn = ch.unary_unary(f"/inference.GRPCInferenceService/{method}")
        return bytes(fn(request, timeout=timeout))


def wait_grpc_ready(port: int, models: list[str], timeout: float = 120) -> None:
    """Poll ``ModelReady`` for every model until each answers ``ready: true``."""
    from tritonclient.grpc import service_pb2 as pb

    t0, last = time.monotonic(), ""
    while time.monotonic() - t0 < timeout:
        try:
            if all(
                pb.ModelReadyResponse.FromString(
                    grpc_call(port, "ModelReady", pb.ModelReadyRequest(name=m).SerializeToString())
                ).ready
                for m in models
            ):
                return
        except Exception as e:  # not up yet
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.25)
    raise RuntimeError(f"gRPC on {port} not ready after {timeout:.0f} s ({last[:300]})")


def decode_outputs(answer: bytes) -> dict[str, list[float]]:
    """Flattened outputs of a ModelInferResponse (raw_output_contents or typed contents)."""
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb

    resp = pb.ModelInferResponse.FromString(answer)
    out = {}
    for i, o in enumerate(resp.outputs):
        if i < len(resp.raw_output_contents):
            vals = np.frombuffer(resp.raw_output_contents[i], dtype=_DTYPES[o.datatype])
        else:
            vals = np.asarray(getattr(o.contents, _TYPED[o.datatype]))
        out[o.name] = vals.astype(np.float64).ravel().tolist()
    return out


def check(spec: servers.ServerSpec, model: str, request: Path, expected: Path) -> tuple[str, int]:
    """(problem or "", answer size): one ModelInfer compared with the in-process reference."""
    import numpy as np

    assert spec.grpc_port is not None
    try:
        answer = grpc_call(spec.grpc_port, "ModelInfer", request.read_bytes())
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:300]}", 0
    if not spec.check_outputs:
        return "", len(answer)
    got = decode_outputs(answer)
    for name, values in json.loads(expected.read_text()).items():
        if name not in got:
            return f"output {name!r} missing (got {sorted(got)})", len(answer)
        a, b = np.asarray(got[name]), np.asarray(values, dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6):
            return f"output {name!r} differs: {got[name][:4]} vs {values[:4]}", len(answer)
    return "", len(answer)


def bring_up(spec: servers.ServerSpec, args: argparse.Namespace, names: list[str]) -> run.Live:
    """Start the server, wait for HTTP (peers) and gRPC readiness, check one answer per model."""
    out_dir = model_builder.DEFAULT_OUT
    info: dict[str, Any] = {"config": spec.config, "versions": spec.versions}
    info |= {"grpc_port": spec.grpc_port, "command": shlex.join(spec.argv)}
    if spec.env:
        info["env"] = spec.env
    live = run.Live(spec, info)
    if spec.unavailable:
        info["skipped"] = spec.unavailable
        print(f"[{spec.name}] skipped: {spec.unavailable}", flush=True)
        return live
    cpu = run._cpu(args.server_cpu)
    print(f"[{spec.name}] starting, gRPC port {spec.grpc_port} (cpu {cpu})", flush=True)
    live.proc = servers.start(spec, cpu, out_dir / "logs")
    t0 = time.monotonic()
    try:
        if spec.name != "raw":
            servers.wait_ready(spec, live.proc, names)
        assert spec.grpc_port is not None
        wait_grpc_ready(spec.grpc_port, names)
    except RuntimeError as exc:
        run._fail(live, exc, out_dir)
        return live
    info["ready_s"] = round(time.monotonic() - t0, 2)
    print(f"[{spec.name}] ready in {info['ready_s']} s", flush=True)
    run._repin(live, cpu)
    bodies = out_dir / "bodies"
    for m in names:
        request = bodies / f"{m}.grpc.bin"
        problem, size = check(spec, m, request, bodies / f"{m}.expected.json")
        if problem:
            print(f"[{spec.name}] grpc {m}: check FAILED: {problem}", flush=True)
            info.setdefault("check_failures", {})[f"grpc/{m}"] = problem
        else:
            live.targets.append(("grpc", m, request))
            info.setdefault("response_bytes", {})[m] = size
    run._repin(live, cpu)
    return live


def one_round(live: run.Live, args: argparse.Namespace, concs: list[int], index: int) -> None:
    """One load run of every (model, concurrency) of this server."""
    for _, m, request in live.targets:
        for c in concs:
            if not one_point(live, args, m, request, c, index):
                return


def one_point(
    live: run.Live, args: argparse.Namespace, m: str, request: Any, c: int, index: int
) -> bool:
    """One load run of one (model, concurrency); False once the server failed."""
    warm = args.warmup if index == 0 else min(1.0, args.warmup)
    assert live.spec.grpc_port is not None and live.proc is not None
    size = live.info["response_bytes"][m]
    before = run.tree_cpu(live.proc.pid)
    try:
        r = grpc_load.run_grpc_load(
            live.spec.grpc_port, request, c, args.duration, warm, args.engine,
            run._cpu(args.load_cpu), size,
        )  # fmt: skip
    except RuntimeError as exc:
        run._fail(live, exc, model_builder.DEFAULT_OUT)
        return False
    # the server process's own CPU and its model workers', per call; the warm-up's calls are
    # counted at the measured rate
    cpu = run.cpu_per_call(before, live.proc.pid, r.infer_per_s * (args.duration + warm))
    live.rounds.setdefault(("grpc", m, c), []).append(r.to_dict() | cpu)
    run._repin(live, run._cpu(args.server_cpu))
    print(
        f"[{live.spec.name}] grpc {m} c={c} round {index + 1}/{args.rounds}: "
        f"{r.infer_per_s:,.0f} infer/s p50 {r.p50_ms:.3f} ms p99 {r.p99_ms:.3f} ms "
        f"errors {r.errors} {r.error_detail or ''} (CPU µs/req: server "
        f"{cpu['server_cpu_us_per_req']:.0f}, workers {cpu['worker_cpu_us_per_req']:.0f}, "
        f"generator {r.gen_cpu_us_per_req:.0f})",
        flush=True,
    )
    return True


def rows_of(live: run.Live) -> list[dict[str, Any]]:
    """run.rows_of plus the generator's median CPU per request."""
    rows = run.rows_of(live)
    for row in rows:
        for key in ("gen_cpu_us_per_req", "server_cpu_us_per_req", "worker_cpu_us_per_req"):
            row[key] = statistics.median(r[key] for r in row["rounds"])
    return rows


def generator_md(results: dict[str, Any]) -> str:
    """The generator's own cost per request and the ceiling that implies; the server process's
    CPU per request (medians of the rounds)."""
    lines = [
        "",
        "Load generator cost (its CPU time per request on its own core; 1e6 / that = the most it "
        "could send) and the server process's CPU time per request (not its model workers'):",
        "",
        "| server | model | concurrency | generator CPU µs/req | generator ceiling req/s "
        "| server CPU µs/req |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        cost = r["gen_cpu_us_per_req"]
        ceiling = f"{1e6 / cost:,.0f}" if cost else "?"
        lines.append(
            f"| {r['server']} | {r['model']} | {r['concurrency']} | {cost:.1f} | {ceiling} "
            f"| {r['server_cpu_us_per_req']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run it; exit status 1 when a server failed or a check did not pass."""
    args = parse_args(argv)
    names, concs = run._csv(args.models), [int(c) for c in run._csv(args.concurrency)]
    out_dir = model_builder.DEFAULT_OUT
    if not all((out_dir / "bodies" / f"{m}.grpc.bin").exists() for m in names):
        model_builder.build(out_dir)
    if args.nice:
        os.nice(args.nice)
    if (load_cpu := run._cpu(args.load_cpu)) is not None:
        os.sched_setaffinity(0, {load_cpu})
    os.environ["BENCH_ORT_THREADS"] = str(args.ort_threads)
    model_builder.write_inferd_onnx_threads(out_dir / "models", args.ort_threads)
    engine = args.engine
    if engine == "auto":
        engine = "h2load" if grpc_load.have_h2load() else "python"
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "kind": "grpc",
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "date": started.isoformat(timespec="seconds"),
        "machine": run.machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": args.note,
        "request_desc": "one ModelInferRequest (one row, raw_input_contents) per call, "
        f"load generator engine {engine}",
    }
    print("in-process model cost ...", flush=True)
    results["inprocess"] = run.in_process(names, out_dir, run._cpu(args.server_cpu))
    specs = [make_spec(n, out_dir / "models", args) for n in run._csv(args.servers)]
    lives: list[run.Live] = []
    try:
        if args.interleave:
            lives = [bring_up(sp, args, names) for sp in specs]
            for i in range(args.rounds):  # each point visits every server in turn
                for m in names:
                    for c in concs:
                        for live in lives:
                            request = next((q for _, n, q in live.targets if n == m), None)
                            if request is not None:
                                one_point(live, args, m, request, c, i)
        else:
            for sp in specs:
                lives.append(bring_up(sp, args, names))
                for i in range(args.rounds):
                    one_round(lives[-1], args, concs, i)
                run.shut_down(lives[-1])
    finally:
        for live in lives:
            run.shut_down(live)
    results["servers"] = {live.spec.name: live.info for live in lives}
    results["rows"] = [row for live in lives for row in rows_of(live)]
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    results["summary"] = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = render_markdown(results) + generator_md(results)
    if args.md:
        args.md.write_text(md)
    print("\n" + md)
    print(f"results: {args.out}")
    failed = any("error" in i or "check_failures" in i for i in results["servers"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
