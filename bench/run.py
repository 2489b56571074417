"""Benchmark inferd against Seldon MLServer and KServe, same models, same machine, same run.

For each server: start it pinned to CPU 0 (``taskset -c 0``), wait until it and every model are
ready, check one answer against the in-process reference, then for each model x protocol x
concurrency run the closed-loop load generator (pinned to CPU 1) ``--rounds`` times and keep the
median; stop the server. Also measures the raw in-process model cost (CPU 0). Prints a markdown
table and writes everything to ``--out`` (JSON).

    bash bench/setup.sh && .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --servers inferd,kserve --models mlp --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import models as model_builder  # noqa: E402
import servers  # noqa: E402
from report import render_markdown, summarise  # noqa: E402

PORTS = {"inferd": 18000, "mlserver": 18100, "kserve": 18200, "raw": 18300, "inferd-base": 18400}
METRICS = ("infer_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms")


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--servers",
        default="inferd,mlserver,kserve",
        help="inferd,mlserver,kserve,raw; inferd-base: a second inferd from --inferd-base-src",
    )
    ap.add_argument("--models", default="mlp,iris", help="mlp,iris")
    ap.add_argument("--protocols", default="v2", help="v2 and/or v1 (v1: inferd, kserve only)")
    ap.add_argument("--concurrency", default="1,8", help="comma list of connection counts")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per round")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before round 1")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per point; the median is kept")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="start every server at once and alternate them point by point within each round "
        "(fairer when the machine is busy: a slow spell of the host falls on every server alike)",
    )
    ap.add_argument("--engine", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (-1: no pin)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for the loadgen (-1: no pin)")
    ap.add_argument(
        "--inferd-src",
        type=Path,
        default=None,
        help="inferd source tree to put on PYTHONPATH (default: this checkout's src/)",
    )
    ap.add_argument(
        "--inferd-base-src",
        type=Path,
        default=None,
        help="the source tree of the `inferd-base` server (e.g. an export of an older commit), "
        "to measure a change before/after in one interleaved run",
    )
    ap.add_argument(
        "--ort-threads",
        type=int,
        default=model_builder.ORT_THREADS,
        help="onnxruntime intra-op threads for every server and in-process (0: ORT default)",
    )
    ap.add_argument("--mlserver-parallel-workers", type=int, default=0)
    servers.add_batching_options(ap)
    ap.add_argument(
        "--inferd-instance-kind",
        choices=["process", "thread"],
        default="process",
        help="inferd's replicas (default: its own default, a worker process per model)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for this run and everything it starts (e.g. -10 as root on a busy box)",
    )
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "results.json")
    ap.add_argument("--md", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--rebuild-models", action="store_true", help="rerun bench/models.py first")
    ap.add_argument("--note", default="", help="free text stored with the results")
    return ap.parse_args(argv)


def _cpu(n: int) -> int | None:
    return None if n < 0 or n >= (os.cpu_count() or 1) else n


def make_spec(name: str, models_root: Path, args: argparse.Namespace) -> servers.ServerSpec:
    """The ServerSpec for ``name``."""
    port = PORTS[name]
    if name in ("inferd", "inferd-base"):
        repo, note = servers.inferd_variant(models_root, args.inferd_instance_kind, args.batching)
        src = args.inferd_base_src if name == "inferd-base" else args.inferd_src
        if name == "inferd-base" and src is None:
            raise SystemExit("--servers inferd-base needs --inferd-base-src")
        spec = servers.inferd_spec(repo, port, src)
        spec.name = name
        spec.config += note
        return spec
    if name == "mlserver":
        return servers.mlserver_variant(
            models_root, port, args.mlserver_parallel_workers, args.batching,
            args.mlserver_batch_time,
        )  # fmt: skip
    if name == "kserve":
        return servers.kserve_spec(models_root / "kserve", port)
    if name == "raw":
        return servers.raw_spec(port)
    raise SystemExit(f"unknown server {name!r}")


def in_process(models: list[str], out_dir: Path, cpu: int | None) -> dict[str, Any]:
    """Run bench/inprocess.py in its own process pinned like the servers."""
    cmd = [
        str(servers.MAIN_PY),
        str(BENCH / "inprocess.py"),
        "--json",
        "--models",
        ",".join(models),
    ]
    cmd += ["--out", str(out_dir), "--cpu", str(-1 if cpu is None else cpu)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        print(f"in-process measurement failed: {res.stderr[-500:]}", file=sys.stderr)
        return {}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


@dataclass
class Live:
    """A server being measured: its process, what passed the check, the rounds so far."""

    spec: servers.ServerSpec
    info: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    targets: list[tuple[str, str, Path]] = field(default_factory=list)
    rounds: dict[tuple[str, str, int], list[dict[str, Any]]] = field(default_factory=dict)


def _repin(live: Live, cpu: int | None) -> None:
    """Keep every server thread on the server CPU; record any that had left it."""
    if live.proc is None:
        return
    moved = servers.enforce_pin(live.proc, cpu)
    if moved:
        live.info.setdefault("repinned_threads", []).extend(moved)
        print(f"[{live.spec.name}] re-pinned to CPU {cpu}: {'; '.join(moved)}", flush=True)


def bring_up(
    spec: servers.ServerSpec,
    args: argparse.Namespace,
    model_names: list[str],
    protocols: list[str],
    out_dir: Path,
) -> Live:
    """Start the server, wait until ready, check one answer per (protocol, model)."""
    info: dict[str, Any] = {"config": spec.config, "versions": spec.versions, "port": spec.port}
    info["command"] = shlex.join(spec.argv)
    if spec.env:
        info["env"] = spec.env
    live = Live(spec, info)
    if spec.unavailable:
        info["skipped"] = spec.unavailable
        print(f"[{spec.name}] skipped: {spec.unavailable}", flush=True)
        return live
    cpu = _cpu(args.server_cpu)
    print(f"[{spec.name}] starting on port {spec.port} (cpu {cpu})", flush=True)
    live.proc = servers.start(spec, cpu, out_dir / "logs")
    try:
        info["ready_s"] = round(servers.wait_ready(spec, live.proc, model_names), 2)
    except RuntimeError as exc:
        _fail(live, exc, out_dir)
        return live
    print(f"[{spec.name}] ready in {info['ready_s']} s", flush=True)
    _repin(live, cpu)
    for proto in [p for p in protocols if p in spec.protocols]:
        for m in model_names:
            body = out_dir / "bodies" / f"{m}.{proto}.json"
            problem = servers.check(spec, proto, m, body, out_dir / "bodies" / f"{m}.expected.json")
            if problem:
                print(f"[{spec.name}] {proto} {m}: check FAILED: {problem}", flush=True)
                info.setdefault("check_failures", {})[f"{proto}/{m}"] = problem
            else:
                live.targets.append((proto, m, body))
    _repin(live, cpu)
    return live


def _fail(live: Live, exc: Exception, out_dir: Path) -> None:
    live.info["error"] = str(exc)
    live.targets = []
    log = out_dir / "logs" / f"{live.spec.name}.log"
    print(f"[{live.spec.name}] FAILED: {exc} (log: {log})", flush=True)
    shut_down(live)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (its threads, not its children); 0 once
    it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its model workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def tree_cpu(pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds so far of the server process and of each of its workers."""
    return cpu_seconds(pid), {w: cpu_seconds(w) for w in descendants(pid)}


def cpu_per_call(
    before: tuple[float, dict[int, float]], pid: int, calls: float
) -> dict[str, float]:
    """Server and worker CPU µs per call since `before` (workers that started meanwhile count
    from 0)."""
    server, workers = tree_cpu(pid)
    w = sum(t - before[1].get(p, 0.0) for p, t in workers.items())
    if not calls:
        return {"server_cpu_us_per_req": 0.0, "worker_cpu_us_per_req": 0.0}
    return {"server_cpu_us_per_req": (server - before[0]) / calls * 1e6,
            "worker_cpu_us_per_req": w / calls * 1e6}  # fmt: skip


def one_round(
    live: Live, args: argparse.Namespace, concs: list[int], index: int, out_dir: Path
) -> None:
    """One loadgen run of every (protocol, model, concurrency) of this server."""
    for proto, m, body in live.targets:
        for c in concs:
            if not one_point(live, args, (proto, m, body, c), index, out_dir):
                return


def one_point(
    live: Live, args: argparse.Namespace, point: tuple[str, str, Path, int], index: int,
    out_dir: Path,
) -> bool:  # fmt: skip
    """One loadgen run of one (protocol, model, body, concurrency); False once the server
    failed."""
    proto, m, body, c = point
    warm = args.warmup if index == 0 else min(1.0, args.warmup)
    assert live.proc is not None
    before = tree_cpu(live.proc.pid)
    try:
        r = loadgen.run_load(
            live.spec.url(proto, m), body, c, args.duration, warm, args.engine,
            _cpu(args.load_cpu),
        )  # fmt: skip
    except RuntimeError as exc:
        _fail(live, exc, out_dir)
        return False
    # CPU of the server process and of its model workers per call (the warm-up's calls are
    # counted at the measured rate): steadier than throughput on a host with noisy neighbours
    cpu = cpu_per_call(before, live.proc.pid, r.infer_per_s * (args.duration + warm))
    live.rounds.setdefault((proto, m, c), []).append(r.to_dict() | cpu)
    _repin(live, _cpu(args.server_cpu))
    print(
        f"[{live.spec.name}] {proto} {m} c={c} round {index + 1}/{args.rounds}: "
        f"{r.infer_per_s:,.0f} infer/s p50 {r.p50_ms:.3f} ms p99 {r.p99_ms:.3f} ms "
        f"errors {r.errors} (CPU µs/req: server {cpu['server_cpu_us_per_req']:.0f}, "
        f"workers {cpu['worker_cpu_us_per_req']:.0f})",
        flush=True,
    )
    return True


def shut_down(live: Live) -> None:
    """Stop the server (if running) and record its exit status."""
    if live.proc is not None:
        live.info["exit_code"] = servers.stop(live.proc)
        live.proc = None


def rows_of(live: Live) -> list[dict[str, Any]]:
    """One row per (protocol, model, concurrency): the median of each metric over the rounds."""
    rows = []
    for (proto, m, c), rounds in live.rounds.items():
        row: dict[str, Any] = {"server": live.spec.name, "protocol": proto, "model": m}
        row["concurrency"] = c
        row |= {k: statistics.median(r[k] for r in rounds) for k in METRICS}
        for k in ("server_cpu_us_per_req", "worker_cpu_us_per_req"):
            if all(k in r for r in rounds):
                row[k] = statistics.median(r[k] for r in rounds)
        row["errors"] = sum(int(r["errors"]) for r in rounds)
        row["engine"] = rounds[0]["engine"]
        row["rounds"] = rounds
        rows.append(row)
    return rows


def machine_info() -> dict[str, Any]:
    """What the results were taken on, including how busy the machine was."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "wrk": loadgen.have_wrk(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark; exit status 1 when a server failed or a check did not pass."""
    args = parse_args(argv)
    model_names, protocols = _csv(args.models), _csv(args.protocols)
    concs = [int(c) for c in _csv(args.concurrency)]
    out_dir = model_builder.DEFAULT_OUT
    if args.rebuild_models or not (out_dir / "bodies" / "mlp.expected.json").exists():
        model_builder.build(out_dir)
    if args.nice:
        os.nice(args.nice)  # inherited by the servers, wrk and the in-process measurement
    load_cpu = _cpu(args.load_cpu)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # keep this orchestrator off the server's core
    os.environ["BENCH_ORT_THREADS"] = str(args.ort_threads)  # peers and inprocess.py read it
    model_builder.write_inferd_onnx_threads(out_dir / "models", args.ort_threads)
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": args.note,
    }
    print("in-process model cost ...", flush=True)
    results["inprocess"] = in_process(model_names, out_dir, _cpu(args.server_cpu))
    results["servers"], results["rows"] = {}, []
    specs = [make_spec(name, out_dir / "models", args) for name in _csv(args.servers)]
    lives: list[Live] = []
    try:
        if args.interleave:  # all up at once; each point visits every server in turn
            lives = [bring_up(sp, args, model_names, protocols, out_dir) for sp in specs]
            points = list(dict.fromkeys((p, m, c) for lv in lives for p, m, _ in lv.targets
                                        for c in concs))  # fmt: skip
            for i in range(args.rounds):
                for proto, m, c in points:
                    for live in lives:
                        body = next((b for p, n, b in live.targets if (p, n) == (proto, m)), None)
                        if body is not None:
                            one_point(live, args, (proto, m, body, c), i, out_dir)
        else:  # one server at a time: start, all its rounds, stop
            for sp in specs:
                lives.append(bring_up(sp, args, model_names, protocols, out_dir))
                for i in range(args.rounds):
                    one_round(lives[-1], args, concs, i, out_dir)
                shut_down(lives[-1])
    finally:
        for live in lives:
            shut_down(live)
    for live in lives:
        results["servers"][live.spec.name] = live.info
        results["rows"] += rows_of(live)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    results["summary"] = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = render_markdown(results)
    if args.md:
        args.md.write_text(md)
    print("\n" + md)
    print(f"results: {args.out}")
    failed = any("error" in i or "check_failures" in i for i in results["servers"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    print(f"elapsed {time.monotonic() - t0:.0f} s")
    sys.exit(rc)
