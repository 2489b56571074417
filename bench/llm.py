"""LLM engine throughput and latency: inferd's continuous batching vs `model.generate` one by one.

Builds a small random Llama with a real-size vocabulary (or takes `--model DIR`), then for each
concurrency C sends C requests at once (64-token prompts, 64 new tokens, greedy, EOS ignored so
every request generates all its tokens) and measures generated tokens/s, time to first token and
inter-token latency:

- `engine`: through `LLMEngine`, stepped by one driver thread (as a replica would run it);
- `sequential`: the same C requests through `model.generate` one at a time (a streamer records
  each token's time), the way a server without continuous batching would serve them.

    .venv/bin/python bench/llm.py --out bench/out/llm.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from inferd.core.generate import GenerateRequest, SamplingParams
from inferd.llm.engine import LLMEngine

VOCAB = 32_000


def build_model(out: Path, *, hidden: int, layers: int, context: int) -> Path:
    """A random Llama (Llama-2 vocabulary size) and a word-level tokenizer of the same size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(VOCAB - 3)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 64, 1),
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarise(
    mode: str, c: int, start: float, arrivals: list[float], times: list[list[float]]
) -> dict[str, Any]:
    end = max(t[-1] for t in times)
    tokens = sum(len(t) for t in times)
    ttft = [t[0] - a for a, t in zip(arrivals, times, strict=True)]
    itl = [b - a for t in times for a, b in itertools.pairwise(t)]
    return {
        "mode": mode,
        "concurrency": c,
        "requests": len(times),
        "generated_tokens": tokens,
        "seconds": end - start,
        "tokens_per_s": tokens / (end - start),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "itl_p50_s": percentile(itl, 50),
        "itl_p99_s": percentile(itl, 99),
    }


def run_engine(
    model_dir: Path, c: int, prompt_len: int, new: int, max_num_seqs: int
) -> dict[str, Any]:
    engine = LLMEngine(model_dir, max_num_seqs=max_num_seqs)
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    # Warm-up (first-call allocations), not measured.
    engine.add_request(
        GenerateRequest("warm", prompt_token_ids=prompts(1, prompt_len, 99)[0], params=params)
    )
    while engine.has_work():
        engine.step()
    times: dict[str, list[float]] = {f"r{i}": [] for i in range(c)}
    done = threading.Event()
    finished: set[str] = set()

    def drive() -> None:
        while len(finished) < c:
            if not engine.has_work():
                time.sleep(0.0002)
                continue
            events = engine.step()
            now = time.perf_counter()
            for ev in events:
                if ev.token_ids:
                    times[ev.request_id].append(now)
                if ev.finished:
                    finished.add(ev.request_id)
        done.set()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    start = time.perf_counter()
    arrivals = []
    for i, ids in enumerate(prompts(c, prompt_len, c)):
        arrivals.append(time.perf_counter())
        engine.add_request(GenerateRequest(f"r{i}", prompt_token_ids=ids, params=params))
    done.wait()
    result = summarise("engine", c, start, arrivals, [times[f"r{i}"] for i in range(c)])
    result["forward_passes"] = engine.stats.steps
    return result


class _Clock:
    """A generate() streamer noting when each new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_sequential(model: Any, c: int, prompt_len: int, new: int) -> dict[str, Any]:
    with torch.inference_mode():
        model.generate(torch.tensor(prompts(1, prompt_len, 99)), max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        arrivals = [start] * c  # all arrive at once and queue for the one model
        times = []
        for ids in prompts(c, prompt_len, c):
            clock = _Clock()
            model.generate(
                torch.tensor([ids]),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                streamer=clock,
            )
            times.append(clock.times)
    return summarise("sequential", c, start, arrivals, times)


def table(rows: list[dict[str, Any]]) -> str:
    seq = {r["concurrency"]: r["tokens_per_s"] for r in rows if r["mode"] == "sequential"}
    lines = [
        "| mode | concurrency | tokens/s | vs sequential "
        "| TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            r["tokens_per_s"] / seq[r["concurrency"]] if r["concurrency"] in seq else float("nan")
        )
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | {ratio:.1f}x | "
            f"{r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms | "
            f"{r['itl_p50_s'] * 1000:.1f} ms | {r['itl_p99_s'] * 1000:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", type=Path, help="a causal LM directory (default: build a random Llama)"
    )
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("bench/out/llm.json"))
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="inferd-llm-bench-") as tmp:
        model_dir = args.model or build_model(
            Path(tmp) / "model", hidden=args.hidden, layers=args.layers, context=512
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        params = sum(p.numel() for p in model.parameters())
        print(
            f"model {model_dir}: {params / 1e6:.1f}M parameters, "
            f"torch threads {torch.get_num_threads()}"
        )
        rows = []
        for c in levels:
            rows.append(run_sequential(model, c, args.prompt_tokens, args.max_tokens))
            print(f"  sequential c={c}: {rows[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
            rows.append(run_engine(model_dir, c, args.prompt_tokens, args.max_tokens, max(levels)))
            print(f"  engine     c={c}: {rows[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    rows.sort(key=lambda r: (r["concurrency"], r["mode"] != "sequential"))
    md = table(rows)
    print()
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "parameters": params,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "markdown": md}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
