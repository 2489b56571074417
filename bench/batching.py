"""Dynamic batching in inferd: one model served unbatched and batched, closed-loop V2 REST load.

The ``wide`` model (``bench/models.py``: FP32 [N,256] -> 3 x 2048 ReLU -> 10; one row costs
~1.3 ms on one core, 32 rows ~5 ms) is served twice by one inferd, both with onnxruntime on one
intra-op thread (``parameters: {intra_op_threads: 1, inter_op_threads: 1}``) and one process
replica, so the server stays on CPU 0:

- ``wide_unbatched``: ``max_batch_size: 64``, no ``dynamic_batching`` (each request runs alone);
- ``wide_batched``: ``max_batch_size: 64``, ``dynamic_batching: {max_queue_delay: 2ms}``
  (``--max-queue-delay``, ``--preferred-batch-sizes``). ``--max-queue-delay 2ms,500us,5ms``
  adds ``wide_batched_500us`` and ``wide_batched_5ms`` (same settings, other delays), each
  compared with ``wide_unbatched``.

Each request carries one row (``bench/out/bodies/wide.v2.json``). For every round, model and
concurrency (default 1, 8, 64): a discarded warm-up, then the measured run (``bench/loadgen.py``,
wrk on CPU 1), with inferd's ``/v2/models/<m>/stats`` read before and after it, so the mean batch
size (inference_count / execution_count) and the batch-size histogram are those of the measured
run. Also measures the model's in-process cost at 1/8/32/64 rows on CPU 0.

    .venv/bin/python bench/batching.py                       # 3 rounds x 10 s
    .venv/bin/python bench/batching.py --duration 3 --rounds 1 --concurrency 64
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import models as model_builder  # noqa: E402
import run  # noqa: E402
import servers  # noqa: E402

PORT = 18400  # gRPC on 18401
UNBATCHED = "wide_unbatched"
ROWS = (1, 8, 32, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument(
        "--max-queue-delay",
        default="2ms",
        help="wide_batched's max_queue_delay; a comma list adds wide_batched_<delay> models",
    )
    ap.add_argument(
        "--preferred-batch-sizes", default="", help="comma list for wide_batched (default none)"
    )
    ap.add_argument("--engine", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--inferd-src", type=Path, default=None)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "batching.json")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--inprocess-only", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def model_names(args: argparse.Namespace) -> dict[str, str | None]:
    """Model name -> its max_queue_delay (None: unbatched)."""
    delays = run._csv(args.max_queue_delay)
    names: dict[str, str | None] = {UNBATCHED: None}
    for i, d in enumerate(delays):
        names["wide_batched" if i == 0 else f"wide_batched_{d}"] = d
    return names


def write_repository(args: argparse.Namespace, out: Path) -> Path:
    """``models/batching/{wide_unbatched,wide_batched...}`` sharing one model.onnx (links)."""
    onnx = out / "models" / "wide" / "model.onnx"
    if not onnx.exists():
        model_builder.build_wide(out)
    repo = out / "models" / "batching"
    common = [
        f"max_batch_size: {args.max_batch_size}",
        "instances: 1",
        "instance_kind: process",
        "parameters:",
        "  intra_op_threads: 1",
        "  inter_op_threads: 1",
    ]
    preferred = [int(x) for x in run._csv(args.preferred_batch_sizes)]
    shutil.rmtree(repo, ignore_errors=True)
    for name, delay in model_names(args).items():
        lines = list(common)
        if delay is not None:
            lines += ["dynamic_batching:", f"  max_queue_delay: {delay}"]
            if preferred:
                lines.append(f"  preferred_batch_sizes: {preferred}")
        folder = repo / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "model.yaml").write_text("\n".join(lines) + "\n")
        target = folder / "1" / "model.onnx"
        try:
            os.link(onnx, target)
        except OSError:
            shutil.copyfile(onnx, target)
    return repo


def inprocess_cost(out: Path) -> dict[str, float]:
    """Median ms of one ``session.run`` on 1/8/32/64 rows (one intra-op thread, this CPU)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(out / "models" / "wide" / "model.onnx"), opts)
    row = np.asarray([model_builder.wide_row()], dtype=np.float32)
    res = {}
    for n in ROWS:
        feed = {"input": np.repeat(row, n, axis=0)}
        for _ in range(5):
            sess.run(None, feed)
        times = []
        for _ in range(max(20, 400 // n)):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        res[str(n)] = round(statistics.median(times) * 1000, 3)
    return res


def get_stats(model: str) -> dict[str, Any]:
    """inferd's statistics of ``model``'s (only) version."""
    url = f"http://127.0.0.1:{PORT}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as r:
        return dict(json.loads(r.read())["model_stats"][0])


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Inferences, executions, mean batch size and batch-size histogram between two reads."""
    inf = after["inference_count"] - before["inference_count"]
    exe = after["execution_count"] - before["execution_count"]
    counts = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    hist = {}
    for b in after["batch_stats"]:
        n = b["compute_infer"]["count"] - counts.get(b["batch_size"], 0)
        if n:
            hist[str(b["batch_size"])] = n
    return {
        "inferences": inf,
        "executions": exe,
        "mean_batch": round(inf / exe, 2) if exe else 0.0,
        "batch_hist": hist,
    }


def measure(model: str, c: int, args: argparse.Namespace, warm: float) -> dict[str, Any]:
    """Warm-up, stats, measured run, stats."""
    url = f"http://127.0.0.1:{PORT}/v2/models/{model}/infer"
    body = model_builder.DEFAULT_OUT / "bodies" / "wide.v2.json"
    cpu = run._cpu(args.load_cpu)
    if warm > 0:
        loadgen.run_load(url, body, c, warm, 0, args.engine, cpu)
    before = get_stats(model)
    r = loadgen.run_load(url, body, c, args.duration, 0, args.engine, cpu).to_dict()
    r |= batch_delta(before, get_stats(model))
    return r


def _hist_text(hist: dict[str, int]) -> str:
    top = sorted(hist.items(), key=lambda kv: -kv[1])[:4]
    total = sum(hist.values()) or 1
    return ", ".join(f"{k}: {v / total:.0%}" for k, v in top)


def render(results: dict[str, Any]) -> str:
    """Markdown: command, conditions, table, ratio."""
    mach, s = results["machine"], results["settings"]
    lines = [
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']} (UTC), {results['elapsed_s']} s; load average "
        f"{'/'.join(f'{x:.2f}' for x in mach['loadavg_start'])} at start, "
        f"{'/'.join(f'{x:.2f}' for x in mach['loadavg_end'])} at end  ",
        f"Method: inferd on CPU {s['server_cpu']}, {results['engine']} (closed loop) on CPU "
        f"{s['load_cpu']}; {s['duration']:g} s per point, {s['rounds']} rounds (models "
        "alternate within a round), median of each column; one row per request.  ",
        f"`wide_batched`: `{results['batched_yaml']}`"
        + (
            f"; other delays: {', '.join(results['extra_delays'])}"
            if results["extra_delays"]
            else ""
        ),
    ]
    if results.get("note"):
        lines.append(f"\n**Note:** {results['note']}")
    cost = results["inprocess_ms"]
    cheaper = f" ({cost['1'] * 32 / cost['32']:.1f}x cheaper per row at 32)" if "32" in cost else ""
    lines += [
        "",
        "In-process `session.run` (one intra-op thread, CPU 0): "
        + ", ".join(f"{n} row(s) {v:.2f} ms" for n, v in cost.items())
        + cheaper
        + ".",
        "",
        "| model | concurrency | infer/s | p50 ms | p99 ms | errors | mean batch | batch sizes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['model']} | {r['concurrency']} | {r['infer_per_s']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {r['mean_batch']:.2f} | "
            f"{_hist_text(r['batch_hist'])} |"
        )
    lines += ["", "Batched vs unbatched:", "", "| model | concurrency | throughput ratio | "
              "p99 ms unbatched -> batched | p50 ms unbatched -> batched |",
              "|---|---:|---:|---|---|"]  # fmt: skip
    for x in results["summary"]:
        lines.append(
            f"| {x['model']} | {x['concurrency']} | **{x['ratio']:.2f}x** | "
            f"{x['p99_unbatched']:.2f} -> {x['p99_batched']:.2f} | "
            f"{x['p50_unbatched']:.2f} -> {x['p50_batched']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput ratio batched/unbatched and latencies, per concurrency."""
    by = {(r["model"], r["concurrency"]): r for r in rows}
    out = []
    for m in dict.fromkeys(r["model"] for r in rows if r["model"] != UNBATCHED):
        for c in sorted({r["concurrency"] for r in rows}):
            u, b = by.get((UNBATCHED, c)), by.get((m, c))
            if u and b and u["infer_per_s"]:
                out.append(
                    {"model": m, "concurrency": c}
                    | {"ratio": round(b["infer_per_s"] / u["infer_per_s"], 2)}
                    | {f"{k}_unbatched": u[k] for k in ("p50_ms", "p99_ms", "infer_per_s")}
                    | {f"{k}_batched": b[k] for k in ("p50_ms", "p99_ms", "infer_per_s")}
                )
    for x in out:  # short keys for the table
        x["p99_unbatched"], x["p99_batched"] = x["p99_ms_unbatched"], x["p99_ms_batched"]
        x["p50_unbatched"], x["p50_batched"] = x["p50_ms_unbatched"], x["p50_ms_batched"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run it; exit status 1 when inferd failed or an answer was wrong."""
    args = parse_args(argv)
    out = model_builder.DEFAULT_OUT
    if args.inprocess_only:
        print(json.dumps(inprocess_cost(out)))
        return 0
    if args.nice:
        os.nice(args.nice)
    if (load_cpu := run._cpu(args.load_cpu)) is not None:
        os.sched_setaffinity(0, {load_cpu})
    repo = write_repository(args, out)
    started = dt.datetime.now(dt.UTC)
    engine = "wrk" if args.engine == "auto" and loadgen.have_wrk() else args.engine
    results: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "date": started.isoformat(timespec="seconds"),
        "machine": run.machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": args.note,
        "engine": engine if engine != "auto" else "python",
        "batched_yaml": (repo / "wide_batched" / "model.yaml").read_text().replace("\n", "; "),
        "extra_delays": run._csv(args.max_queue_delay)[1:],
    }
    names = list(model_names(args))
    pin = ["taskset", "-c", str(args.server_cpu)] if run._cpu(args.server_cpu) is not None else []
    cmd = [*pin, sys.executable, __file__, "--inprocess-only"]
    results["inprocess_ms"] = json.loads(subprocess.check_output(cmd, text=True).splitlines()[-1])
    print(f"in-process ms by rows: {results['inprocess_ms']}", flush=True)
    spec = servers.inferd_spec(repo, PORT, args.inferd_src, PORT + 1)
    spec.name = "inferd-batching"
    results["server"] = {"command": shlex.join(spec.argv), "versions": spec.versions}
    proc = servers.start(spec, run._cpu(args.server_cpu), out / "logs")
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    failed = False
    try:
        servers.wait_ready(spec, proc, names)
        bodies = out / "bodies"
        for m in names:
            problem = servers.check(
                spec, "v2", m, bodies / "wide.v2.json", bodies / "wide.expected.json"
            )
            if problem:
                raise RuntimeError(f"{m}: check FAILED: {problem}")
        concs = [int(c) for c in run._csv(args.concurrency)]
        for i in range(args.rounds):
            warm = args.warmup if i == 0 else min(1.0, args.warmup)
            for m in names:
                for c in concs:
                    r = measure(m, c, args, warm)
                    rounds.setdefault((m, c), []).append(r)
                    print(
                        f"[{m}] c={c} round {i + 1}/{args.rounds}: {r['infer_per_s']:,.0f} "
                        f"infer/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms errors "
                        f"{r['errors']} mean batch {r['mean_batch']} "
                        f"({_hist_text(r['batch_hist'])})",
                        flush=True,
                    )
    except RuntimeError as exc:
        print(f"FAILED: {exc} (log: {out / 'logs' / 'inferd-batching.log'})", flush=True)
        results["error"], failed = str(exc), True
    finally:
        results["server"]["exit_code"] = servers.stop(proc)
    rows = []
    for (m, c), rs in rounds.items():
        row: dict[str, Any] = {"model": m, "concurrency": c}
        row |= {k: statistics.median(r[k] for r in rs) for k in (*run.METRICS, "mean_batch")}
        row["errors"] = sum(int(r["errors"]) for r in rs)
        hist: dict[str, int] = {}
        for r in rs:
            for k, v in r["batch_hist"].items():
                hist[k] = hist.get(k, 0) + v
        rows.append(row | {"batch_hist": hist, "rounds": rs})
    results["rows"], results["summary"] = rows, summarise(rows)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = render(results)
    if args.md:
        args.md.write_text(md)
    print("\n" + md + f"\nresults: {args.out}")
    return 1 if failed or any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
