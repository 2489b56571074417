"""Recovery after SIGKILL: how long inferd serves nothing after its model's worker is killed.

inferd serves ``mlp`` (``instances: 1``, ``instance_kind: process``: one worker process, one
onnxruntime intra-op thread) pinned to CPU 0. This script (pinned to CPU 1) keeps a steady
closed-loop V2 REST load on it (``--concurrency`` keep-alive connections, one thread each,
every request logged with its send time, answer time and status; a request without an answer
after ``--request-timeout`` seconds counts as hung), polls ``/v2/repository/index`` every 10 ms,
and ``--trials`` times: finds the replica's worker (``pgrep -P <server pid>``), ``kill -9``s it,
and measures

- **recovery**: kill -> first successful answer produced by the new replica (answers that
  arrive within 5 ms of the kill were produced by the old one: no process can start that fast);
- **index healthy**: kill -> first index poll showing ``restarts`` + 1 and ``healthy == total``;
- the requests that failed (by status) and that hung, and the longest answer time around
  the kill (requests queued while no replica was up wait, they are not refused).

    .venv/bin/python bench/recovery.py                  # 5 trials
    .venv/bin/python bench/recovery.py --trials 2 --settle 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import models as model_builder  # noqa: E402
import run  # noqa: E402
import servers  # noqa: E402

PORT = 18500  # gRPC on 18501
OLD_REPLICA_S = 0.005


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--settle", type=float, default=2.0, help="steady load before each kill (s)")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="hung after this (s)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--inferd-src", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "recovery.json")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--note", default="")
    return ap.parse_args(argv)


def write_repository(out: Path) -> Path:
    """``models/recovery/mlp``: the benchmark MLP, one process replica, one ORT thread."""
    repo = out / "models" / "recovery"
    folder = repo / "mlp"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    yaml = "instances: 1\ninstance_kind: process\nparameters:\n  intra_op_threads: 1\n"
    (folder / "model.yaml").write_text(yaml + "  inter_op_threads: 1\n")
    target = folder / "1" / "model.onnx"
    target.write_bytes((out / "models" / "inferd" / "mlp" / "1" / "model.onnx").read_bytes())
    return repo


class Load:
    """``n`` threads, each a keep-alive connection sending the body back to back."""

    def __init__(self, n: int, body: bytes, timeout: float) -> None:
        self.body, self.timeout = body, timeout
        self.log: list[tuple[float, float, str]] = []  # (sent, answered, "200" / "503" / error)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]
        self.inflight: dict[int, float] = {}

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        conn: http.client.HTTPConnection | None = None
        me = threading.get_ident()
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=self.timeout)
            t0 = time.perf_counter()
            self.inflight[me] = t0
            try:
                conn.request("POST", "/v2/models/mlp/infer", self.body, headers)
                resp = conn.getresponse()
                resp.read()
                outcome = str(resp.status)
            except TimeoutError:
                outcome = "hung"
                conn.close()
                conn = None
            except (OSError, http.client.HTTPException) as e:
                outcome = type(e).__name__
                conn.close()
                conn = None
            self.inflight.pop(me, None)
            self.log.append((t0, time.perf_counter(), outcome))

    def finish(self) -> list[str]:
        """Stop; the threads still waiting for an answer after the timeout (should be none)."""
        self.stop.set()
        for t in self.threads:
            t.join(self.timeout + 2)
        return [t.name for t in self.threads if t.is_alive()]


def index_entry() -> dict[str, Any]:
    """``mlp``'s replica counts from the repository index ({} when it cannot be read)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
        conn.request("GET", "/v2/repository/index")
        doc = json.loads(conn.getresponse().read())
        conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return {}
    return next((dict(e.get("replicas", {})) for e in doc if e["name"] == "mlp"), {})


def worker_pids(server_pid: int) -> list[int]:
    """The model workers among the server's children."""
    res = subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True, text=True)
    pids = [int(p) for p in res.stdout.split()]
    return [p for p in pids if b"worker_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def trial(load: Load, server_pid: int, settle: float, timeout: float) -> dict[str, Any]:
    """Kill the worker once and measure."""
    time.sleep(settle)
    before = index_entry()
    pids = worker_pids(server_pid)
    if len(pids) != 1 or not before:
        raise RuntimeError(f"expected one worker and an index entry, got {pids} / {before}")
    start_log = len(load.log)
    t_kill = time.perf_counter()
    os.kill(pids[0], signal.SIGKILL)
    t_index = None
    while time.perf_counter() - t_kill < timeout:
        e = index_entry()
        if e.get("restarts", 0) > before["restarts"] and e.get("healthy") == e.get("total"):
            t_index = time.perf_counter()
            break
        time.sleep(0.01)
    time.sleep(1.0)  # steady load after the restart, to see it back to normal
    entries = load.log[start_log:]
    ok_after = [b for a, b, o in entries if o == "200" and b > t_kill + OLD_REPLICA_S]
    t_first = min(ok_after) if ok_after else None
    window = [(a, b, o) for a, b, o in entries if a < (t_first or t_kill + timeout)]
    failed: dict[str, int] = {}
    for _, _, o in entries:
        if o != "200":
            failed[o] = failed.get(o, 0) + 1
    tail = [b for a, b, o in entries if o == "200" and b > (t_first or 0) + 0.5]
    new = worker_pids(server_pid)
    return {
        "killed_pid": pids[0],
        "new_pid": new[0] if len(new) == 1 else new,
        "recovery_s": round(t_first - t_kill, 4) if t_first else None,
        "index_healthy_s": round(t_index - t_kill, 4) if t_index else None,
        "failed": failed,
        "hung": failed.get("hung", 0),
        "old_replica_answers": sum(
            1 for a, b, o in entries if t_kill < b <= t_kill + OLD_REPLICA_S
        ),
        "max_latency_ms": round(max((b - a for a, b, _ in window), default=0) * 1000, 1),
        "infer_per_s_after": round(len(tail) / (max(tail) - min(tail)), 0) if len(tail) > 1 else 0,
        "restarts": index_entry().get("restarts"),
    }


def render(results: dict[str, Any]) -> str:
    """Markdown: command, per-trial table, summary."""
    s, st = results["summary"], results["settings"]
    lines = [
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']} (UTC); load average "
        f"{'/'.join(f'{x:.2f}' for x in results['machine']['loadavg_start'])} at start  ",
        f"Method: inferd (mlp, instances: 1, process replica) on CPU {st['server_cpu']}; "
        f"{st['concurrency']} keep-alive connections (Python threads) on CPU "
        f"{st['load_cpu']}, steady load ~{results['steady_infer_per_s']:,.0f} "
        "infer/s; index polled every 10 ms.",
    ]
    if results.get("note"):
        lines.append(f"\n**Note:** {results['note']}")
    lines += [
        "",
        "| trial | recovery s | index healthy s | failed requests | hung | max latency ms | "
        "infer/s after |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for i, t in enumerate(results["trials"], 1):
        failed = ", ".join(f"{k}: {v}" for k, v in t["failed"].items()) or "0"
        lines.append(
            f"| {i} | {t['recovery_s']} | {t['index_healthy_s']} | {failed} | {t['hung']} | "
            f"{t['max_latency_ms']} | {t['infer_per_s_after']:,.0f} |"
        )
    lines += [
        "",
        f"Recovery (kill -> first answer from the new replica): p50 **{s['recovery_p50_s']} s**, "
        f"max **{s['recovery_max_s']} s**; index healthy again: p50 {s['index_p50_s']} s, max "
        f"{s['index_max_s']} s. Failed requests: {s['failed_total']} in {s['trials']} kills "
        f"({s['failed_by_kind'] or 'none'}); hung: {s['hung_total']}; threads stuck at the "
        f"end: {s['stuck_threads']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the trials; exit status 1 if one did not recover, a request hung or inferd failed."""
    args = parse_args(argv)
    out = model_builder.DEFAULT_OUT
    if not (out / "models" / "inferd" / "mlp" / "1" / "model.onnx").exists():
        model_builder.build(out)
    if (load_cpu := run._cpu(args.load_cpu)) is not None:
        os.sched_setaffinity(0, {load_cpu})
    repo = write_repository(out)
    spec = servers.inferd_spec(repo, PORT, args.inferd_src, PORT + 1)
    spec.name = "inferd-recovery"
    results: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": run.machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": args.note,
        "server": {"command": shlex.join(spec.argv), "versions": spec.versions},
        "trials": [],
    }
    proc = servers.start(spec, run._cpu(args.server_cpu), out / "logs")
    load = Load(
        args.concurrency, (out / "bodies" / "mlp.v2.json").read_bytes(), args.request_timeout
    )
    stuck: list[str] = []
    failed = False
    try:
        servers.wait_ready(spec, proc, ["mlp"])
        load.start()
        time.sleep(1.0)
        n0 = len(load.log)
        time.sleep(1.0)
        results["steady_infer_per_s"] = len(load.log) - n0
        for i in range(args.trials):
            t = trial(load, proc.pid, args.settle, 30.0)
            results["trials"].append(t)
            print(f"trial {i + 1}/{args.trials}: {t}", flush=True)
            failed |= t["recovery_s"] is None or t["hung"] > 0
    except RuntimeError as exc:
        print(f"FAILED: {exc} (log: {out / 'logs' / 'inferd-recovery.log'})", flush=True)
        results["error"], failed = str(exc), True
    finally:
        stuck = load.finish()
        results["server"]["exit_code"] = servers.stop(proc)
    ts = results["trials"]
    rec = [t["recovery_s"] for t in ts if t["recovery_s"] is not None]
    idx = [t["index_healthy_s"] for t in ts if t["index_healthy_s"] is not None]
    kinds: dict[str, int] = {}
    for t in ts:
        for k, v in t["failed"].items():
            kinds[k] = kinds.get(k, 0) + v
    results["summary"] = {
        "trials": len(ts),
        "recovery_p50_s": round(statistics.median(rec), 3) if rec else None,
        "recovery_max_s": max(rec) if rec else None,
        "index_p50_s": round(statistics.median(idx), 3) if idx else None,
        "index_max_s": max(idx) if idx else None,
        "failed_total": sum(kinds.values()),
        "failed_by_kind": ", ".join(f"{k}: {v}" for k, v in kinds.items()),
        "hung_total": sum(t["hung"] for t in ts),
        "stuck_threads": len(stuck),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = render(results) if ts else ""
    if args.md:
        args.md.write_text(md)
    print("\n" + md + f"\nresults: {args.out}")
    return 1 if failed or stuck else 0


if __name__ == "__main__":
    sys.exit(main())
