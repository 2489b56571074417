"""The transformers runtime on tiny random models built here (no hub): every task's signature and
results against the model called directly, and a model repository's code never running."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.core.errors import InvalidInput, ModelLoadError, UntrustedArtifact
from inferd.core.spec import ModelSpec
from inferd.runtimes import detect_runtime, runtime_class
from inferd.runtimes.transformers import TransformersRuntime, generation_options

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = [
    *("the", "a", "man", "is", "eating", "food", "bread", "piece", "of", "girl", "carrying"),
    *("baby", "good", "bad", "movie", "great", "terrible", "paris", "london", "john", "mary"),
    *("lives", "in", "and", "was", "very"),
]
TEXTS = ["the movie was great", "john lives in paris", "a bad movie", "the girl is carrying a baby"]


def texts(*values: str) -> dict[str, np.ndarray]:
    return {"text": np.array([v.encode() for v in values], dtype=object)}


def decoded(array: np.ndarray) -> list[Any]:
    return np.vectorize(lambda b: b.decode(), otypes=[object])(array).tolist()


def bert_tokenizer(path: Path) -> Any:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = transformers.BertTokenizer(vocab=vocab)
    tok.save_pretrained(path)
    return tok


def word_tokenizer(path: Path, specials: list[str]) -> Any:
    """A word-level tokenizer (pad, eos, unk first) for the generation models."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.save_pretrained(path)
    return tok


def bert_config(**extra: Any) -> Any:
    return transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        initializer_range=0.3,  # wide enough that random outputs differ between texts
        **extra,
    )


def build(path: Path, model: Any, tokenizer: Any = bert_tokenizer) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    labels = {"id2label": {0: "negative", 1: "neutral", 2: "positive"}}
    ner = {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}}
    gpt2 = transformers.GPT2Config(
        vocab_size=3 + len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=1, eos_token_id=1, pad_token_id=0, initializer_range=0.3,
    )  # fmt: skip
    t5 = transformers.T5Config(
        vocab_size=3 + len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, initializer_factor=5.0,
    )  # fmt: skip
    specials = ["<pad>", "</s>", "<unk>"]
    seq2seq = transformers.T5ForConditionalGeneration(t5)
    with torch.no_grad():  # pad and eos never win, so the random model says something
        seq2seq.shared.weight[:2] = 0
        seq2seq.lm_head.weight[:2] = 0
    return {
        "classifier": build(
            root / "cls" / "1", transformers.BertForSequenceClassification(bert_config(**labels))
        ),
        "tagger": build(
            root / "ner" / "1", transformers.BertForTokenClassification(bert_config(**ner))
        ),
        "masked": build(root / "mlm" / "1", transformers.BertForMaskedLM(bert_config())),
        "encoder": build(root / "enc" / "1", transformers.BertModel(bert_config())),
        "gpt2": build(
            root / "gpt2" / "1",
            transformers.GPT2LMHeadModel(gpt2),
            lambda p: word_tokenizer(p, specials),
        ),
        "t5": build(
            root / "t5" / "1",
            seq2seq,
            lambda p: word_tokenizer(p, specials),
        ),
    }


def load(path: Path, task: str | None = None, trusted: bool = False, **params: Any) -> Any:
    spec = ModelSpec(name="m", task=task, parameters=params, trusted=trusted)
    rt = runtime_class(detect_runtime(path))(spec, "1", path)
    rt.load()
    return rt


def sig(rt: Any) -> tuple[list[Any], list[Any]]:
    inputs, outputs = rt.signature()
    return [t.to_dict() for t in inputs], [t.to_dict() for t in outputs]


# ---------------------------------------------------------------- detection, registry, layers


def test_detects_a_hugging_face_directory(models: dict[str, Path]) -> None:
    assert detect_runtime(models["classifier"]) == "transformers"
    assert runtime_class("transformers") is TransformersRuntime


@pytest.mark.parametrize(
    ("model", "task"),
    [
        ("classifier", "text-classification"),
        ("tagger", "token-classification"),
        ("masked", "fill-mask"),
        ("encoder", "embeddings"),
        ("gpt2", "text-generation"),
        ("t5", "text2text-generation"),
    ],
)
def test_task_is_inferred_from_architectures(
    models: dict[str, Path], model: str, task: str
) -> None:
    assert load(models[model]).task == task


def test_task_from_spec_with_alias_and_unknown_task(models: dict[str, Path]) -> None:
    assert load(models["encoder"], task="feature-extraction").task == "embeddings"
    with pytest.raises(ModelLoadError, match="task 'image-segmentation' is not served"):
        load(models["encoder"], task="image-segmentation")


# ---------------------------------------------------------------- text classification


def test_classification_matches_the_model_and_batches_like_single(models: dict[str, Path]) -> None:
    rt = load(models["classifier"])
    assert sig(rt) == (
        [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        ],
    )
    batch = rt.infer(texts(*TEXTS))
    assert batch["logits"].shape == (4, 3) and batch["logits"].dtype == np.float32
    assert batch["score"].shape == (4,) and batch["score"].dtype == np.float32
    assert batch["label"].dtype == object and batch["label"].shape == (4,)
    model = transformers.BertForSequenceClassification.from_pretrained(models["classifier"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["classifier"])
    names = ["negative", "neutral", "positive"]
    for i, text in enumerate(TEXTS):
        alone = rt.infer(texts(text))
        np.testing.assert_allclose(batch["logits"][i], alone["logits"][0], atol=1e-5)
        with torch.no_grad():
            expected = model(**tok([text], return_tensors="pt")).logits[0].numpy()
        np.testing.assert_allclose(batch["logits"][i], expected, atol=1e-5)
        probs = np.exp(expected) / np.exp(expected).sum()
        assert decoded(batch["label"])[i] == names[int(expected.argmax())]
        assert batch["score"][i] == pytest.approx(probs.max(), abs=1e-5)


def test_outputs_subset_and_bad_text(models: dict[str, Path]) -> None:
    rt = load(models["classifier"])
    assert set(rt.infer(texts("good"), outputs=["label"])) == {"label"}
    with pytest.raises(InvalidInput, match="unknown output 'nope'"):
        rt.infer(texts("good"), outputs=["nope"])
    with pytest.raises(InvalidInput, match="'text' must be UTF-8"):
        rt.infer({"text": np.array([b"\xff\xfe"], dtype=object)})
    with pytest.raises(InvalidInput, match="'text' holds no texts"):
        rt.infer({"text": np.array([], dtype=object)})


# ---------------------------------------------------------------- token classification


def test_token_classification_entities(models: dict[str, Path]) -> None:
    rt = load(models["tagger"])
    assert sig(rt)[1] == [{"name": "entities", "datatype": "BYTES", "shape": [-1]}]
    out = rt.infer(texts("john lives in paris", "mary was very good"))["entities"]
    assert out.shape == (2,)
    model = transformers.BertForTokenClassification.from_pretrained(models["tagger"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["tagger"])
    for text, raw in zip(["john lives in paris", "mary was very good"], out, strict=True):
        entities = json.loads(raw.decode())
        with torch.no_grad():
            tags = model(**tok([text], return_tensors="pt")).logits[0, 1:-1].argmax(-1).tolist()
        expected = [
            (word, model.config.id2label[t])
            for word, t in zip(text.split(), tags, strict=True)
            if model.config.id2label[t] != "O"
        ]
        assert [(e["word"], e["entity"]) for e in entities] == expected
        for e in entities:
            assert text[e["start"] : e["end"]] == e["word"]
            assert 0 < e["score"] <= 1


# ---------------------------------------------------------------- fill-mask


def test_fill_mask_top_k(models: dict[str, Path]) -> None:
    rt = load(models["masked"], top_k=3)
    assert sig(rt)[1] == [
        {"name": "sequence", "datatype": "BYTES", "shape": [-1, 3]},
        {"name": "score", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "token_str", "datatype": "BYTES", "shape": [-1, 3]},
    ]
    out = rt.infer(texts("the man is eating [MASK]", "[MASK] lives in london"))
    assert out["sequence"].shape == out["token_str"].shape == out["score"].shape == (2, 3)
    assert out["score"].dtype == np.float32
    assert (np.diff(out["score"], axis=1) <= 0).all() and out["score"].sum(axis=1).max() <= 1
    model = transformers.BertForMaskedLM.from_pretrained(models["masked"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["masked"])
    with torch.no_grad():
        logits = model(**tok(["the man is eating [MASK]"], return_tensors="pt")).logits[0, 5]
    best = tok.convert_ids_to_tokens(logits.topk(3).indices.tolist())
    assert decoded(out["token_str"])[0] == best
    assert decoded(out["sequence"])[0][0] == f"the man is eating {best[0]}"
    assert load(models["masked"]).signature()[1][0].shape == (-1, 5)  # default top_k
    with pytest.raises(InvalidInput, match=r"'text'\[1\] has no mask token \[MASK\]"):
        rt.infer(texts("the [MASK]", "no mask here"))


# ---------------------------------------------------------------- embeddings (mean pooling)


def test_mean_pooled_embeddings(models: dict[str, Path]) -> None:
    rt = load(models["encoder"])
    assert sig(rt)[1] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "tokens", "datatype": "INT64", "shape": [-1]},
    ]
    out = rt.infer(texts("a man", "the girl is carrying a baby"))
    assert out["embedding"].shape == (2, 16) and out["embedding"].dtype == np.float32
    assert out["tokens"].tolist() == [4, 8]  # [CLS] ... [SEP]
    model = transformers.BertModel.from_pretrained(models["encoder"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["encoder"])
    with torch.no_grad():
        hidden = model(**tok(["a man"], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(out["embedding"][0], hidden.mean(0).numpy(), atol=1e-5)
    unit = rt.infer(texts("a man", "the girl"), parameters={"normalize": True})["embedding"]
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), [1, 1], atol=1e-5)
    assert not np.allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-3)


# ---------------------------------------------------------------- generation


def test_text_generation_is_the_continuation_and_greedy_is_the_model(
    models: dict[str, Path],
) -> None:
    rt = load(models["gpt2"])
    assert sig(rt) == (
        [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    )
    prompt = "the man is eating"
    out = decoded(rt.infer(texts(prompt), parameters={"max_new_tokens": 6})["text"])
    model = transformers.GPT2LMHeadModel.from_pretrained(models["gpt2"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["gpt2"])
    ids = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out == [expected]
    assert 1 <= len(out[0].split()) <= 6
    assert rt.infer(texts(prompt), parameters={"max_new_tokens": 6})["text"][0] == out[0].encode()
    default = decoded(rt.infer(texts(prompt))["text"])[0]  # max_new_tokens 32
    assert len(default.split()) > 6 or ref[0, -1].item() == 1


def test_text_generation_sampling_follows_the_seed(models: dict[str, Path]) -> None:
    rt = load(models["gpt2"])
    one = {"max_new_tokens": 12, "temperature": 1.5, "seed": 1}
    a = rt.infer(texts("the girl"), parameters=one)["text"][0]
    b = rt.infer(texts("the girl"), parameters=one)["text"][0]
    c = rt.infer(texts("the girl"), parameters={**one, "seed": 2})["text"][0]
    assert a == b and a != c


def test_text_generation_batches_like_single(models: dict[str, Path]) -> None:
    rt = load(models["gpt2"])
    prompts = ["the man is eating", "paris", "a girl was"]
    batch = rt.infer(texts(*prompts), parameters={"max_new_tokens": 5})["text"]
    assert batch.shape == (3,)
    alone = [rt.infer(texts(p), parameters={"max_new_tokens": 5})["text"][0] for p in prompts]
    assert batch.tolist() == alone


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2, "do_sample": True}, "top_p"),
        ({"top_k": "ten"}, "top_k"),
        ({"seed": -4}, "seed"),
        ({"do_sample": "yes"}, "do_sample"),
    ],
)
def test_bad_generation_parameters_name_the_parameter(params: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{name}: "):
        generation_options({}, params)


def test_generation_options() -> None:
    assert generation_options({}, {}) == {"max_new_tokens": 32, "do_sample": False}
    assert generation_options({"max_new_tokens": 8}, {"temperature": 0.5, "top_p": 0.9}) == {
        "max_new_tokens": 8,
        "do_sample": True,
        "temperature": 0.5,
        "top_p": 0.9,
    }
    assert generation_options({}, {"temperature": 0, "do_sample": True})["do_sample"] is False


def test_text2text_generation(models: dict[str, Path]) -> None:
    rt = load(models["t5"])
    out = decoded(rt.infer(texts("john lives in paris"), parameters={"max_new_tokens": 5})["text"])
    model = transformers.T5ForConditionalGeneration.from_pretrained(models["t5"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(models["t5"])
    with torch.no_grad():
        ref = model.generate(
            **tok(["john lives in paris"], return_tensors="pt"), max_new_tokens=5, do_sample=False
        )
    assert out == [tok.decode(ref[0], skip_special_tokens=True)]
    assert out[0] != ""


# ---------------------------------------------------------------- security

EVIL = textwrap.dedent(
    """
    from pathlib import Path
    Path({canary!r}).write_text("custom code ran")
    from transformers import BertConfig, BertForSequenceClassification

    class EvilConfig(BertConfig):
        pass

    class EvilModel(BertForSequenceClassification):
        config_class = EvilConfig
    """
)


def evil_repo(root: Path, models: dict[str, Path], canary: Path, field: str) -> Path:
    """The classifier plus a modeling_evil.py that writes `canary` when imported, mapped from
    config.json's or tokenizer_config.json's auto_map."""
    path = root / "evil" / "1"
    path.mkdir(parents=True)
    for item in models["classifier"].iterdir():
        (path / item.name).write_bytes(item.read_bytes())
    (path / "modeling_evil.py").write_text(EVIL.format(canary=str(canary)))
    target = path / ("config.json" if field == "config" else "tokenizer_config.json")
    raw = json.loads(target.read_text())
    raw["auto_map"] = (
        {
            "AutoConfig": "modeling_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
            "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
        }
        if field == "config"
        else {"AutoTokenizer": ["modeling_evil.EvilConfig", "modeling_evil.EvilConfig"]}
    )
    target.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("field", ["config", "tokenizer"])
def test_auto_map_is_refused_and_never_run(
    tmp_path: Path, models: dict[str, Path], field: str
) -> None:
    canary = tmp_path / "canary"
    path = evil_repo(tmp_path, models, canary, field)
    with pytest.raises(ModelLoadError, match="auto_map"):
        load(path)
    assert not canary.exists()
    rt = load(path, ignore_auto_map=True)  # the stock class for model_type 'bert'
    assert type(rt._model).__name__ == "BertForSequenceClassification"
    assert rt.infer(texts("a good movie"))["logits"].shape == (1, 3)
    assert not canary.exists()


def test_unknown_model_type_is_refused(tmp_path: Path, models: dict[str, Path]) -> None:
    canary = tmp_path / "canary"
    path = evil_repo(tmp_path, models, canary, "config")
    raw = json.loads((path / "config.json").read_text())
    raw.pop("auto_map")
    raw["model_type"] = "evil"
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="model_type 'evil' is not a model type"):
        load(path)
    assert not canary.exists()


def test_pickle_weights_need_trust(tmp_path: Path, models: dict[str, Path]) -> None:
    path = tmp_path / "pickled" / "1"
    path.mkdir(parents=True)
    for item in models["classifier"].iterdir():
        if item.suffix != ".safetensors":
            (path / item.name).write_bytes(item.read_bytes())
    model = transformers.BertForSequenceClassification.from_pretrained(models["classifier"])
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    spec = ModelSpec(name="m")
    with pytest.raises(UntrustedArtifact, match=r"pytorch_model\.bin is a pickle"):
        TransformersRuntime(spec, "1", path).load()
    rt = TransformersRuntime(ModelSpec(name="m", trusted=True), "1", path)
    rt.load()
    np.testing.assert_allclose(
        rt.infer(texts("good"))["logits"],
        load(models["classifier"]).infer(texts("good"))["logits"],
        atol=1e-6,
    )


def test_foreign_sentence_transformers_module_is_refused(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    path = tmp_path / "st" / "1"
    path.mkdir(parents=True)
    for item in models["encoder"].iterdir():
        (path / item.name).write_bytes(item.read_bytes())
    modules = [{"idx": 0, "name": "0", "path": "", "type": "evil_module.Pooling"}]
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=r"'evil_module\.Pooling'.*not part of sentence"):
        load(path)


def test_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        TransformersRuntime(ModelSpec(name="m"), "1", path).load()
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights"):
        TransformersRuntime(ModelSpec(name="m"), "1", path).load()
