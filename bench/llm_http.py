"""LLM serving through the whole server: `inferd serve` + the OpenAI streaming API over HTTP.

Same model and workload as `bench/llm.py` (random Llama, 32k vocabulary, 64-token prompts given
as token ids, 64 new tokens, greedy, EOS ignored), but each request is a real
`POST /v1/completions` with `"stream": true` from an asyncio client, so the numbers include
HTTP, JSON, Server-Sent Events and the event loop. TTFT is the time to the first event that
carries text; ITL the time between text events.

    .venv/bin/python bench/llm_http.py --out bench/out/llm_http.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from llm import build_model, percentile, prompts  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one(client: httpx.AsyncClient, ids: list[int], max_tokens: int) -> dict[str, Any]:
    body = {"model": "bench", "prompt": ids, "max_tokens": max_tokens, "stream": True,
            "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    times: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                tokens = doc["usage"]["completion_tokens"]
            for choice in doc.get("choices", []):
                if choice.get("text"):
                    times.append(time.perf_counter())
    end = time.perf_counter()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {"ttft": times[0] - start if times else float("nan"), "gaps": gaps,
            "tokens": tokens, "start": start, "end": end}  # fmt: skip


async def level(url: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    batch = prompts(concurrency, args.prompt_tokens, seed=concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)
    ) as client:
        await one(client, batch[0], 4)  # warm-up
        results = await asyncio.gather(*(one(client, ids, args.max_tokens) for ids in batch))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttft = [r["ttft"] * 1000 for r in results]
    gaps = [g * 1000 for r in results for g in r["gaps"]]
    total = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "tokens_per_s": total / wall, "tokens": total,
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "itl_p50_ms": percentile(gaps, 50), "itl_p99_ms": percentile(gaps, 99)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "llm_http.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build_model(repo / "bench" / "1", hidden=args.hidden, layers=args.layers,
                    context=args.prompt_tokens + args.max_tokens + 64)  # fmt: skip
        (repo / "bench" / "model.yaml").write_text("runtime: llm\nparameters: {max_num_seqs: 32}\n")
        port = free_port()
        env = {**os.environ, "INFERD_DATA_DIR": str(Path(tmp) / "data")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferd.cli.main", "serve", "--model-repository", str(repo),
             "--http-port", str(port), "--no-grpc", "--no-access-log", "--log-level", "warning"],
            env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("inferd did not start")
                time.sleep(0.5)
            rows = [asyncio.run(level(url, int(c), args)) for c in args.concurrency.split(",")]
        finally:
            proc.terminate()
            proc.wait(60)
    print("| concurrency | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['tokens_per_s']:,.0f} | {r['ttft_p50_ms']:.0f} ms | "
            f"{r['ttft_p99_ms']:.0f} ms | {r['itl_p50_ms']:.1f} ms | {r['itl_p99_ms']:.1f} ms |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
