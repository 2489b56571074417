"""Derived figures and the markdown report for a ``bench/run.py`` results dict.

.venv/bin/python bench/report.py bench/out/results.json   # re-render a saved run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NOT_PEERS = {"inferd", "inferd-base", "raw"}


def _rows(results: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in match.items())]


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """In-process cost, per-request overhead at c=1, inferd's throughput vs the faster peer."""
    inproc = {m: v["median_us"] for m, v in results.get("inprocess", {}).items()}
    overhead = []
    for r in _rows(results, concurrency=1):
        if r["model"] in inproc and r["server"] != "raw":  # raw runs no model
            over = r["p50_ms"] * 1000 - inproc[r["model"]]
            overhead.append(
                {k: r[k] for k in ("server", "protocol", "model")}
                | {"p50_ms": r["p50_ms"], "overhead_us": round(over, 1)}
            )
    concs = sorted({r["concurrency"] for r in results["rows"]})
    target = 8 if 8 in concs else (concs[-1] if concs else None)
    ratios = []
    for r in _rows(results, server="inferd", concurrency=target):
        peers = [
            p
            for p in _rows(results, protocol=r["protocol"], model=r["model"], concurrency=target)
            if p["server"] not in NOT_PEERS
        ]
        if not peers:
            continue
        best = max(peers, key=lambda p: p["infer_per_s"])
        ratios.append(
            {
                "protocol": r["protocol"],
                "model": r["model"],
                "concurrency": target,
                "inferd_infer_per_s": round(r["infer_per_s"], 1),
                "peer": best["server"],
                "peer_infer_per_s": round(best["infer_per_s"], 1),
                "ratio": round(r["infer_per_s"] / best["infer_per_s"], 2),
            }
        )
    return {"inprocess_us": inproc, "overhead_c1": overhead, "inferd_vs_best_peer": ratios}


def proto_label(protocol: str, rest: bool = True) -> str:
    """``v2`` -> ``V2 REST``, ``grpc`` -> ``gRPC``."""
    if protocol == "grpc":
        return "gRPC"
    return protocol.upper() + (" REST" if rest else "")


def _fmt_load(load: list[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "?"


def render_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: main table, overhead, ratio, configurations."""
    mach = results["machine"]
    s = results["settings"]
    summ = results["summary"]
    engine = next((r["engine"] for r in results["rows"]), "none")
    lines = [
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']} (UTC), {results.get('elapsed_s', '?')} s  ",
        f"Machine: {mach['cpus']} CPUs ({mach['cpu_model']}), Linux {mach['kernel']}, "
        f"Python {mach['python']}; load average (1/5/15 min) {_fmt_load(mach.get('loadavg_start'))}"
        f" at start, {_fmt_load(mach.get('loadavg_end'))} at end  ",
        f"Method: server on CPU {s['server_cpu']}, load generator ({engine}, closed loop, "
        f"keep-alive) on CPU {s['load_cpu']}; {s['duration']:g} s per round, {s['rounds']} rounds "
        + (
            "interleaved across the servers (all up at once)"
            if s.get("interleave")
            else "per server (one server up at a time)"
        )
        + ", "
        "median of each column over the rounds; "
        + results.get("request_desc", "one JSON request (one row) per call")
        + (f"; niceness {s['nice']}" if s.get("nice") else "")
        + f"; onnxruntime intra-op threads {s.get('ort_threads', 'default')} (0 = ORT default)"
        + ".",
    ]
    if results.get("note"):
        lines.append(f"\n**Note:** {results['note']}")
    cpu = all("worker_cpu_us_per_req" in r for r in results["rows"]) and results["rows"]
    lines += [
        "",
        "| server | protocol | model | concurrency | infer/s | p50 ms | p99 ms | errors |"
        + (" server CPU µs/req | workers CPU µs/req |" if cpu else ""),
        "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if cpu else ""),
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['server']} | {proto_label(r['protocol'])} | {r['model']} | {r['concurrency']} | "
            f"{r['infer_per_s']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |"
            + (
                f" {r['server_cpu_us_per_req']:.0f} | {r['worker_cpu_us_per_req']:.0f} |"
                if cpu
                else ""
            )
        )
    if summ["inprocess_us"]:
        cost = ", ".join(f"{m} {v:.1f} µs" for m, v in summ["inprocess_us"].items())
        lines += ["", f"In-process model cost (median, same core, no server): {cost}."]
    if summ["overhead_c1"]:
        lines += [
            "",
            "Per-request server overhead at concurrency 1 = p50 - in-process cost:",
            "",
            "| server | protocol | model | p50 ms | overhead µs |",
            "|---|---|---|---:|---:|",
        ]
        lines += [
            f"| {o['server']} | {proto_label(o['protocol'], False)} | {o['model']} | "
            f"{o['p50_ms']:.3f} | "
            f"{o['overhead_us']:,.0f} |"
            for o in summ["overhead_c1"]
        ]
    if summ["inferd_vs_best_peer"]:
        c = summ["inferd_vs_best_peer"][0]["concurrency"]
        lines += [
            "",
            f"inferd throughput vs the faster peer at concurrency {c}:",
            "",
            "| protocol | model | inferd infer/s | faster peer | peer infer/s | ratio |",
            "|---|---|---:|---|---:|---:|",
        ]
        lines += [
            f"| {proto_label(x['protocol'], False)} | {x['model']} | "
            f"{x['inferd_infer_per_s']:,.0f} | "
            f"{x['peer']} | {x['peer_infer_per_s']:,.0f} | **{x['ratio']:.2f}x** |"
            for x in summ["inferd_vs_best_peer"]
        ]
    lines += ["", "Server configurations:", ""]
    for name, info in results["servers"].items():
        vers = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        lines.append(f"- **{name}** ({vers or 'versions unknown'}): {info['config']}")
        for key in ("skipped", "error"):
            if key in info:
                lines.append(f"  - {key.upper()}: {info[key]}")
        if info.get("repinned_threads"):
            moved = "; ".join(info["repinned_threads"])
            lines.append(f"  - threads that had left the server CPU, moved back: {moved}")
        for what, why in info.get("check_failures", {}).items():
            lines.append(f"  - CHECK FAILED {what}: {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Re-render a saved results file."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out/results.json"
    print(render_markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
