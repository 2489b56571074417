"""LLMEngine on tiny random Llama- and GPT-2-style models built here (no hub, no network).

The oracle for greedy output is `model.generate(do_sample=False)` on one request at a time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from inferd.core.errors import InvalidInput  # noqa: E402
from inferd.core.generate import GenerateRequest, SamplingParams, TokenEvent  # noqa: E402
from inferd.llm.engine import LLMEngine  # noqa: E402

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today?",
    "continuous batching serves many requests at once",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "stop strings cut the text before they appear",
    "numbers 0 1 2 3 4 5 6 7 8 9 and more words here",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
WORDS = " ".join(CORPUS).split()
PROMPTS = [" ".join(WORDS[i : i + 1 + (i * 5) % 9]) for i in range(16)]


def _tokenizer(chat: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Only characters of the corpus in the alphabet: every token decodes to whole characters.
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"])
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass
class Models:
    llama: Path
    gpt2: Path
    root: Path

    def dir(self, kind: str) -> Path:
        return {"llama": self.llama, "gpt2": self.gpt2}[kind]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("llm-models")
    tok = _tokenizer(chat=True)
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, **ids,
        )
    )  # fmt: skip
    llama.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    torch.manual_seed(1)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids
        )
    )
    gpt2.save_pretrained(root / "gpt2")
    _tokenizer(chat=False).save_pretrained(root / "gpt2")  # a model without a chat template
    return Models(root / "llama", root / "gpt2", root)


_REFERENCE: dict[tuple[str, str], Any] = {}


def reference(model_dir: Path, prompt_ids: list[int], max_new: int, **kwargs: Any) -> list[int]:
    """What `generate` returns for this request alone (greedy unless told otherwise)."""
    key = (str(model_dir), "model")
    if key not in _REFERENCE:
        _REFERENCE[key] = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model = _REFERENCE[key]
    kwargs.setdefault("do_sample", False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new, **kwargs)
    return [int(t) for t in out[0, len(prompt_ids) :]]


def greedy(max_tokens: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def drain(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list[TokenEvent]]:
    events: dict[str, list[TokenEvent]] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            return events
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
    raise AssertionError("engine did not finish")


def tokens(evs: list[TokenEvent]) -> list[int]:
    return [t for ev in evs for t in ev.token_ids]


def text(evs: list[TokenEvent]) -> str:
    return "".join(ev.text for ev in evs)


def final(evs: list[TokenEvent]) -> TokenEvent:
    assert evs[-1].finished and not any(ev.finished for ev in evs[:-1])
    return evs[-1]


@pytest.fixture
def llama(models: Models) -> Iterator[LLMEngine]:
    yield LLMEngine(models.llama, max_num_seqs=16)


# ---- continuous batching is real ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_sixteen_concurrent_greedy_requests_match_each_alone(models: Models, kind: str) -> None:
    engine = LLMEngine(models.dir(kind), max_num_seqs=16)
    lengths = [4 + (i * 7) % 29 for i in range(16)]
    expected = {}
    for i, prompt in enumerate(PROMPTS):
        expected[f"r{i}"] = reference(models.dir(kind), engine.encode(prompt), lengths[i])
    # Half arrive first; the other half join the running batch between decoding steps.
    for i in range(8):
        engine.add_request(GenerateRequest(f"r{i}", prompt=PROMPTS[i], params=greedy(lengths[i])))
    events: dict[str, list[TokenEvent]] = {}
    most_running = 0
    for _ in range(3):
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
    for i in range(8, 16):
        engine.add_request(GenerateRequest(f"r{i}", prompt=PROMPTS[i], params=greedy(lengths[i])))
    while engine.has_work():
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
        most_running = max(most_running, engine.stats.running)
    got = {rid: tokens(evs) for rid, evs in events.items()}
    assert got == expected
    for rid, evs in events.items():
        assert text(evs) == engine.tokenizer.decode(expected[rid], skip_special_tokens=True)
        assert final(evs).completion_tokens == len(expected[rid])
    total = sum(len(v) for v in expected.values())
    assert engine.stats.generated_tokens == total
    assert engine.stats.steps < total / 3, (engine.stats.steps, total)
    assert most_running >= 12
    assert engine.stats.running == 0 and engine.stats.kv_cache_usage == 0.0


def test_token_stream_is_one_event_per_token(llama: LLMEngine) -> None:
    llama.add_request(GenerateRequest("a", prompt=PROMPTS[3], params=greedy(9, ignore_eos=True)))
    evs = drain(llama)["a"]
    assert [len(ev.token_ids) for ev in evs] == [1] * 9
    assert [ev.completion_tokens for ev in evs] == list(range(1, 10))
    assert final(evs).finish_reason == "length"
    assert evs[0].prompt_tokens == len(llama.encode(PROMPTS[3]))


def test_requests_added_from_many_threads_while_a_driver_thread_steps(models: Models) -> None:
    import threading

    engine = LLMEngine(models.gpt2, max_num_seqs=6)
    events: dict[str, list[TokenEvent]] = {}
    stop = threading.Event()

    def drive() -> None:
        while not stop.is_set():
            for ev in engine.step():
                events.setdefault(ev.request_id, []).append(ev)

    def client(k: int) -> None:
        for j in range(4):
            i = (k * 4 + j) % len(PROMPTS)
            engine.add_request(GenerateRequest(f"t{k}-{j}", prompt=PROMPTS[i], params=greedy(6)))

    driver = threading.Thread(target=drive)
    driver.start()
    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    deadline = time.monotonic() + 60
    while engine.has_work() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    driver.join()
    assert len(events) == 16 and all(evs[-1].finished for evs in events.values())
    for rid, evs in events.items():
        k, j = (int(x) for x in rid[1:].split("-"))
        ids = engine.encode(PROMPTS[(k * 4 + j) % len(PROMPTS)])
        assert tokens(evs) == reference(models.gpt2, ids, 6)


# ---- sampling ---------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_alone_or_batched(models: Models) -> None:
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, top_k=100, seed=7)
    alone = LLMEngine(models.llama)
    alone.add_request(GenerateRequest("s", prompt=PROMPTS[0], params=params))
    first = tokens(drain(alone)["s"])
    batched = LLMEngine(models.llama)
    for i in range(5):
        noise = SamplingParams(max_tokens=30, temperature=1.0, seed=100 + i)
        batched.add_request(GenerateRequest(f"n{i}", prompt=PROMPTS[i + 1], params=noise))
    batched.step()
    batched.add_request(GenerateRequest("s", prompt=PROMPTS[0], params=params))
    assert tokens(drain(batched)["s"]) == first
    other = LLMEngine(models.llama)
    other.add_request(GenerateRequest("s", prompt=PROMPTS[0], params=replace(params, seed=8)))
    assert tokens(drain(other)["s"]) != first
    # Sampling really samples: greedy would pick one fixed continuation.
    other.add_request(GenerateRequest("g", prompt=PROMPTS[0], params=greedy(24, ignore_eos=True)))
    assert tokens(drain(other)["g"]) != first


def test_top_k_1_and_tiny_top_p_sample_the_greedy_token(llama: LLMEngine, models: Models) -> None:
    ids = llama.encode(PROMPTS[5])
    want = reference(models.llama, ids, 12)
    for i, extra in enumerate([{"top_k": 1}, {"top_p": 1e-6}]):
        p = SamplingParams(max_tokens=12, temperature=1.5, seed=i, **extra)
        llama.add_request(GenerateRequest(f"k{i}", prompt_token_ids=ids, params=p))
    out = drain(llama)
    assert tokens(out["k0"]) == want
    assert tokens(out["k1"]) == want


@pytest.mark.parametrize("penalty", [1.8, 0.5])
def test_repetition_penalty_follows_hugging_face(
    llama: LLMEngine, models: Models, penalty: float
) -> None:
    ids = llama.encode(PROMPTS[2])
    plain = reference(models.llama, ids, 30)
    assert len(set(plain)) < len(plain), "precondition: the tiny model repeats itself"
    want = reference(models.llama, ids, 30, repetition_penalty=penalty)
    params = greedy(30, repetition_penalty=penalty)
    llama.add_request(GenerateRequest("r", prompt_token_ids=ids, params=params))
    got = tokens(drain(llama)["r"])
    assert got == want
    assert got != plain


def test_repetition_penalty_pushes_seen_tokens_away_from_both_signs() -> None:
    from inferd.llm.sampling import RowSampling, sample

    def pick(logits: list[float], history: list[int], penalty: float) -> int:
        row = RowSampling(greedy(1, repetition_penalty=penalty), None, history, {})
        return sample(torch.tensor([logits]), [row])[0]

    # HF semantics: a seen token's positive logit is divided, a negative one multiplied.
    assert pick([2.0, 1.5, -3.0], [0], 2.0) == 1  # 2.0 / 2 = 1.0 < 1.5
    assert pick([-1.0, -1.3, -4.0], [1], 0.5) == 1  # -1.3 * 0.5 = -0.65 > -1.0
    assert pick([-1.0, -1.3, -4.0], [0], 2.0) == 1  # -1.0 * 2 = -2.0 < -1.3


class _OpenAIPenalties:
    """The OpenAI formula as a generate() logits processor: the oracle for the engine's."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row in range(scores.shape[0]):
            out = input_ids[row, self.prompt_len :]
            if out.numel():
                counts = torch.bincount(out, minlength=scores.shape[-1]).to(scores.dtype)
                scores[row] -= self.frequency * counts + self.presence * (counts > 0)
        return scores


@pytest.mark.parametrize(("presence", "frequency"), [(1.5, 0.0), (0.0, 0.7), (0.5, -0.3)])
def test_presence_and_frequency_penalties_follow_openai(
    llama: LLMEngine, models: Models, presence: float, frequency: float
) -> None:
    ids = llama.encode(PROMPTS[2])
    plain = reference(models.llama, ids, 30)
    processor = transformers.LogitsProcessorList([_OpenAIPenalties(len(ids), presence, frequency)])
    want = reference(models.llama, ids, 30, logits_processor=processor)
    params = greedy(30, presence_penalty=presence, frequency_penalty=frequency)
    llama.add_request(GenerateRequest("p", prompt_token_ids=ids, params=params))
    got = tokens(drain(llama)["p"])
    assert got == want
    assert got != plain


# ---- stopping ---------------------------------------------------------------------------------


def _plain(engine: LLMEngine, prompt: str, n: int = 24) -> tuple[list[int], str]:
    engine.add_request(GenerateRequest("plain", prompt=prompt, params=greedy(n, ignore_eos=True)))
    evs = drain(engine)["plain"]
    return tokens(evs), text(evs)


def test_stop_string_cuts_the_text_and_is_never_emitted(llama: LLMEngine) -> None:
    ids, full = _plain(llama, PROMPTS[4])
    assert len(full) > 12
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full.find(stop)
    params = greedy(24, ignore_eos=True, stop=("never-there", stop))
    llama.add_request(GenerateRequest("s", prompt=PROMPTS[4], params=params))
    evs = drain(llama)["s"]
    last = final(evs)
    assert (last.finish_reason, last.stop_reason) == ("stop", stop)
    assert text(evs) == full[:cut]
    assert all(stop not in ev.text for ev in evs)
    assert tokens(evs) == ids[: len(tokens(evs))] and len(tokens(evs)) < len(ids)


def test_text_that_may_start_a_stop_string_is_held_back_then_released(llama: LLMEngine) -> None:
    ids, full = _plain(llama, PROMPTS[1])
    k = next(k for k in range(3, len(ids)) if len(llama.tokenizer.decode(ids[:k])) >= 2)
    upto = llama.tokenizer.decode(ids[:k])
    stop = upto[-2:] + "\u2603\u2603"  # its start appears in the output, the whole never does
    assert stop not in full
    llama.add_request(
        GenerateRequest("h", prompt=PROMPTS[1], params=greedy(24, ignore_eos=True, stop=(stop,)))
    )
    evs = drain(llama)["h"]
    assert text(evs[:k]) == upto[:-2]  # held back at token k ...
    assert text(evs) == full  # ... and released later, nothing lost
    assert final(evs).finish_reason == "length"


def test_stop_token_ids(llama: LLMEngine) -> None:
    ids, _ = _plain(llama, PROMPTS[6])
    i = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    llama.add_request(
        GenerateRequest("t", prompt=PROMPTS[6], params=greedy(24, stop_token_ids=(ids[i],)))
    )
    evs = drain(llama)["t"]
    assert tokens(evs) == ids[: i + 1]
    assert (final(evs).finish_reason, final(evs).stop_reason) == ("stop", ids[i])
    assert text(evs) == llama.tokenizer.decode(ids[:i])  # the stop token's own text is not emitted


def test_max_tokens_finishes_with_length(llama: LLMEngine) -> None:
    llama.add_request(GenerateRequest("m", prompt=PROMPTS[0], params=greedy(5, ignore_eos=True)))
    last = final(drain(llama)["m"])
    assert (last.finish_reason, last.completion_tokens, last.stop_reason) == ("length", 5, None)


def test_a_request_done_at_its_prefill_leaves_its_group_mates_intact(
    llama: LLMEngine, models: Models
) -> None:
    ids = llama.encode(PROMPTS[8])
    want = reference(models.llama, ids, 8)
    for rid, n in (("one", 1), ("full", 8), ("two", 2)):  # same prompt: one prefill forward
        llama.add_request(GenerateRequest(rid, prompt_token_ids=ids, params=greedy(n)))
    out = drain(llama)
    assert tokens(out["one"]) == want[:1] and final(out["one"]).finish_reason == "length"
    assert tokens(out["two"]) == want[:2]
    assert tokens(out["full"]) == want


@pytest.fixture(scope="session")
def eos_model(models: Models) -> tuple[Path, list[int]]:
    """The Llama with its EOS moved to the third token it greedily writes for PROMPTS[7]."""
    engine = LLMEngine(models.llama)
    ids, _ = _plain(engine, PROMPTS[7], 10)
    assert ids[2] not in ids[:2], "precondition: the third token is new"
    target = models.root / "llama-eos"
    shutil.copytree(models.llama, target)
    gen = json.loads((target / "generation_config.json").read_text())
    gen["eos_token_id"] = [ids[2]]
    (target / "generation_config.json").write_text(json.dumps(gen))
    return target, ids


def test_eos_stops_unless_ignore_eos(eos_model: tuple[Path, list[int]]) -> None:
    path, ids = eos_model
    engine = LLMEngine(path)
    engine.add_request(GenerateRequest("eos", prompt=PROMPTS[7], params=greedy(10)))
    engine.add_request(
        GenerateRequest("ign", prompt=PROMPTS[7], params=greedy(10, ignore_eos=True))
    )
    out = drain(engine)
    assert tokens(out["eos"]) == ids[:3]
    assert (final(out["eos"]).finish_reason, final(out["eos"]).stop_reason) == ("stop", None)
    assert tokens(out["ign"]) == ids
    assert final(out["ign"]).finish_reason == "length"


def test_min_tokens_keeps_eos_and_stop_tokens_away(eos_model: tuple[Path, list[int]]) -> None:
    path, ids = eos_model
    engine = LLMEngine(path)
    engine.add_request(GenerateRequest("min", prompt=PROMPTS[7], params=greedy(10, min_tokens=6)))
    engine.add_request(
        GenerateRequest(
            "mst",
            prompt=PROMPTS[7],
            params=greedy(10, min_tokens=6, ignore_eos=True, stop_token_ids=(ids[3],)),
        )
    )
    out = drain(engine)
    got = tokens(out["min"])
    assert got[:2] == ids[:2] and got[2] != ids[2]  # EOS was masked at token 3
    assert len(got) >= 6 and ids[2] not in got[:6]
    assert ids[3] not in tokens(out["mst"])[:6]


# ---- slots, limits, errors --------------------------------------------------------------------


def test_abort_frees_the_slot_for_a_waiting_request(models: Models) -> None:
    engine = LLMEngine(models.llama, max_num_seqs=2)
    for rid in ("a", "b", "c", "d"):
        engine.add_request(
            GenerateRequest(rid, prompt=PROMPTS[0], params=greedy(60, ignore_eos=True))
        )
    first = engine.step()
    assert {ev.request_id for ev in first} == {"a", "b"}
    assert (engine.stats.running, engine.stats.waiting) == (2, 2)
    engine.abort("a")
    engine.abort("d")  # still waiting: it must never run
    evs = {ev.request_id: ev for ev in engine.step()}
    assert evs["a"].finished and evs["a"].finish_reason == "abort"
    assert (
        evs["d"].finished and evs["d"].finish_reason == "abort" and evs["d"].completion_tokens == 0
    )
    assert not evs["c"].finished and evs["c"].completion_tokens == 1  # admitted in the same step
    assert not evs["b"].finished
    assert (engine.stats.running, engine.stats.waiting) == (2, 0)
    engine.abort("b")
    evs = {ev.request_id: ev for ev in engine.step()}
    assert evs["b"].finish_reason == "abort"
    assert engine.stats.running == 1
    rest = drain(engine)
    assert set(rest) == {"c"} and final(rest["c"]).finish_reason == "length"
    engine.abort("c")  # finished: ignored
    assert not engine.has_work()


def test_max_num_seqs_is_never_exceeded(models: Models) -> None:
    engine = LLMEngine(models.gpt2, max_num_seqs=3)
    for i in range(10):
        engine.add_request(
            GenerateRequest(f"r{i}", prompt=PROMPTS[i], params=greedy(3 + i, ignore_eos=True))
        )
    seen, done = 0, set()
    while engine.has_work():
        for ev in engine.step():
            if ev.finished:
                done.add(ev.request_id)
        assert engine.stats.running <= 3
        seen = max(seen, engine.stats.running)
    assert seen == 3 and len(done) == 10


def test_too_long_or_bad_requests_are_refused_naming_the_field(
    llama: LLMEngine, models: Models
) -> None:
    limit = llama.max_model_len
    assert limit == 128

    def refused(req: GenerateRequest) -> str:
        with pytest.raises(InvalidInput) as err:
            llama.add_request(req)
        return err.value.message

    assert refused(GenerateRequest("x", prompt_token_ids=[5] * limit, params=greedy(1))).startswith(
        "prompt:"
    )
    assert refused(GenerateRequest("x", prompt_token_ids=[5] * 100, params=greedy(29))).startswith(
        "max_tokens:"
    )
    assert refused(GenerateRequest("x", prompt="", params=greedy(4))).startswith("prompt:")
    assert refused(GenerateRequest("x", prompt_token_ids=[10**6], params=greedy(4))).startswith(
        "prompt:"
    )
    assert refused(
        GenerateRequest("x", prompt="hi", params=SamplingParams(temperature=3.0))
    ).startswith("temperature:")
    assert refused(GenerateRequest("x", prompt="hi", params=greedy(4, min_tokens=5))).startswith(
        "min_tokens:"
    )
    assert (
        llama.add_request(GenerateRequest("ok", prompt_token_ids=[5] * 100, params=greedy(28)))
        == 100
    )
    assert refused(GenerateRequest("ok", prompt="hi", params=greedy(4))).startswith("request_id:")
    # max_tokens=None means "up to the context length".
    llama.add_request(
        GenerateRequest(
            "all",
            prompt_token_ids=[5] * 120,
            params=SamplingParams(max_tokens=None, temperature=0, ignore_eos=True),
        )
    )
    out = drain(llama)
    assert final(out["all"]).completion_tokens == 8 and final(out["all"]).finish_reason == "length"
    assert final(out["ok"]).completion_tokens <= 28
    short = LLMEngine(models.llama, max_model_len=32)
    assert short.max_model_len == 32
    with pytest.raises(InvalidInput, match=r"^max_tokens:"):
        short.add_request(GenerateRequest("x", prompt_token_ids=[5] * 30, params=greedy(3)))
    with pytest.raises(InvalidInput, match=r"^max_model_len:"):
        LLMEngine(models.llama, max_model_len=4096)


def test_a_model_error_fails_the_running_requests_and_the_engine_keeps_serving(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LLMEngine(models.llama)
    for rid in ("a", "b"):
        engine.add_request(
            GenerateRequest(rid, prompt=PROMPTS[1], params=greedy(20, ignore_eos=True))
        )
    engine.step()
    real = engine.model.forward
    calls = {"n": 0}

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", broken)
    evs = {ev.request_id: ev for ev in engine.step()}
    for rid in ("a", "b"):
        assert evs[rid].finished and evs[rid].finish_reason == "error"
        assert evs[rid].error is not None and "simulated device fault" in evs[rid].error
    assert engine.stats.running == 0 and not engine.has_work()
    ids = engine.encode(PROMPTS[9])
    engine.add_request(GenerateRequest("c", prompt_token_ids=ids, params=greedy(12)))
    assert tokens(drain(engine)["c"]) == reference(models.llama, ids, 12)


def test_a_failed_prefill_fails_only_the_newcomers(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = LLMEngine(models.gpt2)
    ids = engine.encode(PROMPTS[3])
    engine.add_request(GenerateRequest("old", prompt_token_ids=ids, params=greedy(10)))
    started = engine.step()
    real = engine.model.forward

    def broken(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 1:  # prefills only
            raise ValueError("bad prompt batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", broken)
    engine.add_request(GenerateRequest("new", prompt=PROMPTS[5], params=greedy(10)))
    out = drain(engine)
    assert final(out["new"]).finish_reason == "error" and "bad prompt batch" in (
        final(out["new"]).error or ""
    )
    assert tokens(started + out["old"]) == reference(models.gpt2, ids, 10)


# ---- chat -------------------------------------------------------------------------------------


def test_chat_prompt_uses_the_tokenizer_template(llama: LLMEngine, models: Models) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    prompt = llama.chat_prompt(messages)
    assert prompt == "<bos><system>be brief\n<user>hello\n<assistant>"
    assert llama.encode(prompt).count(llama.tokenizer.bos_token_id) == 1  # never doubled
    gpt2 = LLMEngine(models.gpt2)
    with pytest.raises(InvalidInput, match=r"^messages: this model has no chat template"):
        gpt2.chat_prompt(messages)
