"""Hugging Face model directories on transformers (and sentence-transformers for embeddings).

Safety: code from a model repository is never imported. Loading always passes
`trust_remote_code=False` and `local_files_only=True`, builds the config with the stock class of
its `model_type` (an `auto_map` is refused, or dropped with `parameters.ignore_auto_map`), and
reads safetensors only; pickle weights (`*.bin`, `*.pt`, ...) need `trusted: true`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.core.errors import (
    InvalidField,
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
)
from inferd.core.generate import parse_sampling
from inferd.core.spec import TensorSpec
from inferd.runtimes.base import Runtime, framework_message, int_parameter, safetensors_only

#: Accepted task names -> the task served.
TASK_ALIASES: dict[str, str] = {
    "text-classification": "text-classification",
    "sentiment-analysis": "text-classification",
    "token-classification": "token-classification",
    "ner": "token-classification",
    "fill-mask": "fill-mask",
    "embeddings": "embeddings",
    "feature-extraction": "embeddings",
    "sentence-embeddings": "embeddings",
    "sentence-similarity": "embeddings",
    "text-generation": "text-generation",
    "text2text-generation": "text2text-generation",
    "summarization": "text2text-generation",
    "translation": "text2text-generation",
}
#: Task -> the transformers auto-mapping that gives the stock model class for a config class.
_MODEL_MAPPINGS: dict[str, str] = {
    "text-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING",
    "token-classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING",
    "fill-mask": "MODEL_FOR_MASKED_LM_MAPPING",
    "embeddings": "MODEL_MAPPING",
    "text-generation": "MODEL_FOR_CAUSAL_LM_MAPPING",
    "text2text-generation": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING",
}
_DTYPES = ("auto", "float32", "float16", "bfloat16")
#: Pickled files a Hugging Face folder may hold that no loader reads (the trainer's arguments).
_NEVER_LOADED = frozenset({"training_args.bin"})
_MAX_NEW_TOKENS_LIMIT = 4096


class TransformersRuntime(Runtime):
    """Serves one task of a Hugging Face model directory (`config.json` + safetensors + tokenizer).

    `model.yaml` parameters: `task` (when `task:` is not set and `architectures` does not say),
    `device` (`cpu` / `cuda`; default `cuda` when available), `dtype`
    (auto|float32|float16|bfloat16), `max_length` (input tokens), `top_k` (fill-mask, default
    5), `normalize` (embeddings), `num_threads`, `ignore_auto_map`, and defaults for the
    generation parameters.
    """

    name = "transformers"
    platform = "transformers"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task = ""
        self._torch: Any = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._st: Any = None  # a SentenceTransformer, for embeddings from such a directory
        self._device = "cpu"
        self._max_length: int | None = None
        self._top_k = 5

    # ------------------------------------------------------------------ load

    def load(self) -> None:
        try:
            import torch
            import transformers
        except ImportError:
            raise ModelLoadError(
                "the transformers runtime needs transformers and torch: "
                "pip install transformers torch"
            ) from None
        params = self.spec.parameters
        config_raw = _read_json(self.path / "config.json")
        if config_raw is None and not (self.path / "modules.json").is_file():
            raise ModelLoadError(f"no config.json in version {self.version}")
        self._refuse_custom_code()
        use_safetensors = safetensors_only(
            self.path, self.version, self.spec.trusted, ignore=frozenset({"training_args.bin"})
        )
        self.task = self._resolve_task(config_raw or {})
        self._device = _pick_device(torch, params.get("device"))
        if params.get("num_threads") is not None:
            torch.set_num_threads(max(1, int_parameter(params, "num_threads")))
        self._top_k = max(1, int_parameter(params, "top_k", 5))
        self._torch = torch
        try:
            if self.task == "embeddings" and (self.path / "modules.json").is_file():
                self._load_sentence_transformer(use_safetensors)
            else:
                self._load_transformers(transformers, torch, config_raw or {}, use_safetensors)
        except (ModelLoadError, InvalidInput):
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the {self.task} model: {framework_message(exc, self.path)}"
            ) from None
        self._inputs = (TensorSpec("text", "BYTES", (-1,)),)
        self._outputs = self._output_specs()

    def _refuse_custom_code(self) -> None:
        """Refuse an `auto_map` (custom classes) unless ignored, and non-stock ST modules."""
        ignore = bool(self.spec.parameters.get("ignore_auto_map", False))
        for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
            for found in sorted(self.path.rglob(name)):
                raw = _read_json(found)
                if raw is not None and raw.get("auto_map") and not ignore:
                    where = found.relative_to(self.path)
                    raise ModelLoadError(
                        f"{where} maps to custom code in the repository (auto_map); inferd never "
                        "runs a model repository's code. Set parameters.ignore_auto_map: true to "
                        "load the stock transformers class for its model_type instead"
                    )
        modules = self.path / "modules.json"
        if modules.is_file():
            try:
                entries = json.loads(modules.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise ModelLoadError("modules.json is not valid JSON") from None
            if not isinstance(entries, list):
                raise ModelLoadError("modules.json must be a list of modules")
            for entry in entries:
                kind = entry.get("type", "") if isinstance(entry, dict) else ""
                if not (isinstance(kind, str) and kind.startswith("sentence_transformers.")):
                    raise ModelLoadError(
                        f"modules.json names module type '{str(kind)[:80]}', which is not part of "
                        "sentence-transformers; inferd never runs a model repository's code"
                    )

    def _resolve_task(self, config: dict[str, Any]) -> str:
        wanted = self.spec.task or self.spec.parameters.get("task")
        if wanted:
            task = TASK_ALIASES.get(str(wanted).lower())
            if task is None:
                raise ModelLoadError(
                    f"task '{wanted}' is not served by the transformers runtime "
                    f"(known: {', '.join(sorted(TASK_ALIASES))})"
                )
            return task
        if (self.path / "modules.json").is_file():
            return "embeddings"
        for arch in config.get("architectures") or []:
            arch = str(arch)
            if arch.endswith("ForSequenceClassification"):
                return "text-classification"
            if arch.endswith("ForTokenClassification"):
                return "token-classification"
            if arch.endswith("ForMaskedLM"):
                return "fill-mask"
            if arch.endswith("ForConditionalGeneration") and config.get("is_encoder_decoder"):
                return "text2text-generation"
            if arch.endswith(("ForCausalLM", "LMHeadModel")):
                return "text-generation"
            if arch.endswith("Model"):
                return "embeddings"
        raise ModelLoadError(
            "cannot tell the task from config.json 'architectures'; set 'task' in model.yaml "
            f"(one of {', '.join(sorted(set(TASK_ALIASES.values())))})"
        )

    def _load_transformers(
        self, transformers: Any, torch: Any, raw: dict[str, Any], use_safetensors: bool
    ) -> None:
        from transformers.models.auto import modeling_auto
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        model_type = raw.get("model_type")
        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
            raise ModelLoadError(
                f"config.json model_type '{str(model_type)[:64]}' is not a model type this "
                f"transformers ({transformers.__version__}) knows; custom model code is never run"
            )
        # The stock config class of the model_type: an auto_map cannot redirect it.
        config = CONFIG_MAPPING[model_type].from_pretrained(str(self.path), local_files_only=True)
        config.__dict__.pop("auto_map", None)
        mapping = getattr(modeling_auto, _MODEL_MAPPINGS[self.task])
        try:
            model_cls = mapping[type(config)]
        except KeyError:
            raise ModelLoadError(
                f"model type '{model_type}' has no transformers class for task '{self.task}'"
            ) from None
        model = model_cls.from_pretrained(
            str(self.path),
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=use_safetensors,
            dtype=self._dtype(torch),
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(self.path), config=config, local_files_only=True, trust_remote_code=False
        )
        model.to(self._device).eval()
        if self.task == "text-generation":
            # Continuations start right after every prompt; a long prompt keeps its end.
            tokenizer.padding_side = tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if self.task == "fill-mask" and tokenizer.mask_token_id is None:
            raise ModelLoadError("the tokenizer has no mask token, so fill-mask cannot run")
        limits = [
            int(v)
            for v in (
                self.spec.parameters.get("max_length"),
                getattr(tokenizer, "model_max_length", None),
                getattr(config, "max_position_embeddings", None),
            )
            if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1e9
        ]
        self._max_length = min(limits) if limits else None
        self._model, self._tokenizer = model, tokenizer

    def _load_sentence_transformer(self, use_safetensors: bool) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ModelLoadError(
                "this is a sentence-transformers model: pip install sentence-transformers"
            ) from None
        st = SentenceTransformer(
            str(self.path),
            device=self._device,
            local_files_only=True,
            trust_remote_code=False,
            model_kwargs={"use_safetensors": use_safetensors, "dtype": self._dtype(self._torch)},
        )
        st.eval()
        self._st = st
        self._tokenizer = st.tokenizer

    def _dtype(self, torch: Any) -> Any:
        name = str(
            self.spec.parameters.get("dtype", "auto" if self._device != "cpu" else "float32")
        )
        if name not in _DTYPES:
            raise ModelLoadError(f"parameter 'dtype' must be one of {', '.join(_DTYPES)}")
        return "auto" if name == "auto" else getattr(torch, name)

    def _output_specs(self) -> tuple[TensorSpec, ...]:
        if self.task == "text-classification":
            n = int(getattr(self._model.config, "num_labels", -1))
            return (
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("score", "FP32", (-1,)),
                TensorSpec("logits", "FP32", (-1, n)),
            )
        if self.task == "token-classification":
            return (TensorSpec("entities", "BYTES", (-1,)),)
        if self.task == "fill-mask":
            k = min(self._top_k, len(self._tokenizer))
            return (
                TensorSpec("sequence", "BYTES", (-1, k)),
                TensorSpec("score", "FP32", (-1, k)),
                TensorSpec("token_str", "BYTES", (-1, k)),
            )
        if self.task == "embeddings":
            return (
                TensorSpec("embedding", "FP32", (-1, self.embedding_dim())),
                TensorSpec("tokens", "INT64", (-1,)),
            )
        return (TensorSpec("text", "BYTES", (-1,)),)

    def embedding_dim(self) -> int:
        """The embedding width (embeddings task)."""
        if self._st is not None:
            st = self._st
            get = (
                getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
            )
            return int(get())
        return int(self._model.config.hidden_size)

    # ------------------------------------------------------------------ infer

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        if self._torch is None or (self._model is None and self._st is None):
            raise ModelExecutionError(f"model '{self.spec.name}' is not loaded")
        names = self.requested_outputs(outputs)
        texts = _texts(inputs)
        run = {
            "text-classification": self._classify,
            "token-classification": self._tokens,
            "fill-mask": self._fill_mask,
            "embeddings": self._embed,
            "text-generation": self._generate,
            "text2text-generation": self._generate,
        }[self.task]
        try:
            with self._torch.inference_mode():
                result = run(texts, parameters or {})
        except (InvalidInput, ModelExecutionError):
            raise
        except Exception as exc:
            raise ModelExecutionError(framework_message(exc, self.path)) from None
        return {name: result[name] for name in names}

    def _encode(self, texts: list[str]) -> Any:
        enc = self._tokenizer(
            texts,
            padding=True,
            truncation=self._max_length is not None,
            max_length=self._max_length,
            return_tensors="pt",
        )
        return enc.to(self._device)

    def _classify(self, texts: list[str], params: dict[str, Any]) -> dict[str, np.ndarray]:
        config = self._model.config
        logits = self._model(**self._encode(texts)).logits.float()
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            probs = self._torch.sigmoid(logits)
        else:
            probs = self._torch.softmax(logits, dim=-1)
        score, index = probs.max(dim=-1)
        labels = [str(config.id2label.get(int(i), f"LABEL_{int(i)}")) for i in index.tolist()]
        return {
            "label": _bytes_array(labels),
            "score": score.cpu().numpy().astype(np.float32),
            "logits": logits.cpu().numpy().astype(np.float32),
        }

    def _tokens(self, texts: list[str], params: dict[str, Any]) -> dict[str, np.ndarray]:
        enc = self._tokenizer(
            texts,
            padding=True,
            truncation=self._max_length is not None,
            max_length=self._max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping").tolist()
        special = enc.pop("special_tokens_mask").tolist()
        mask = enc["attention_mask"].tolist()
        logits = self._model(**enc.to(self._device)).logits.float()
        probs = self._torch.softmax(logits, dim=-1)
        score, index = probs.max(dim=-1)
        id2label = self._model.config.id2label
        results = []
        for row, text in enumerate(texts):
            found: list[dict[str, Any]] = []
            for col, (start, end) in enumerate(offsets[row]):
                if not mask[row][col] or special[row][col] or start == end:
                    continue
                label = str(id2label.get(int(index[row, col]), f"LABEL_{int(index[row, col])}"))
                found.append(
                    {
                        "word": text[start:end],
                        "entity": label,
                        "score": float(score[row, col]),
                        "start": int(start),
                        "end": int(end),
                        "index": col,
                    }
                )
            results.append(json.dumps([e for e in found if e["entity"] != "O"]))
        return {"entities": _bytes_array(results)}

    def _fill_mask(self, texts: list[str], params: dict[str, Any]) -> dict[str, np.ndarray]:
        tokenizer = self._tokenizer
        enc = self._encode(texts)
        ids = enc["input_ids"]
        masks = (ids == tokenizer.mask_token_id).nonzero().tolist()
        per_row: dict[int, int] = {}
        for row, col in masks:
            if row in per_row:
                raise InvalidInput(
                    f"input 'text'[{row}] has more than one mask token {tokenizer.mask_token}"
                )
            per_row[row] = col
        for row in range(len(texts)):
            if row not in per_row:
                raise InvalidInput(f"input 'text'[{row}] has no mask token {tokenizer.mask_token}")
        logits = self._model(**enc).logits.float()
        k = self._outputs[1].shape[1] if self._outputs else self._top_k
        sequences, scores, strings = [], [], []
        for row in range(len(texts)):
            col = per_row[row]
            probs = self._torch.softmax(logits[row, col], dim=-1)
            top = probs.topk(k)
            filled_row, string_row = [], []
            for token_id in top.indices.tolist():
                filled = ids[row].clone()
                filled[col] = token_id
                keep = filled[enc["attention_mask"][row].bool()]
                filled_row.append(tokenizer.decode(keep.tolist(), skip_special_tokens=True))
                string_row.append(tokenizer.decode([token_id]).strip())
            sequences.append(filled_row)
            strings.append(string_row)
            scores.append(top.values.cpu().numpy())
        return {
            "sequence": _bytes_array(sequences),
            "score": np.asarray(scores, dtype=np.float32).reshape(len(texts), k),
            "token_str": _bytes_array(strings),
        }

    def _embed(self, texts: list[str], params: dict[str, Any]) -> dict[str, np.ndarray]:
        normalize = _bool(params, self.spec.parameters, "normalize", False)
        if self._st is not None:
            st = self._st
            vectors = st.encode(
                texts,
                batch_size=len(texts),
                convert_to_numpy=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
            counted = self._tokenizer(texts, truncation=True, max_length=st.get_max_seq_length())
            tokens = [len(ids) for ids in counted["input_ids"]]
            return {
                "embedding": np.asarray(vectors, dtype=np.float32),
                "tokens": np.asarray(tokens, dtype=np.int64),
            }
        enc = self._encode(texts)
        model = self._model
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        hidden = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if normalize:
            pooled = self._torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return {
            "embedding": pooled.cpu().numpy().astype(np.float32),
            "tokens": enc["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int64),
        }

    def _generate(self, texts: list[str], params: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        options = generation_options(self.spec.parameters, params)
        seed = options.pop("seed", None)
        tokenizer = self._tokenizer
        if len(texts) > 1 and tokenizer.pad_token_id is None:
            raise InvalidInput("this model's tokenizer has no pad token: send one text at a time")
        enc = self._encode(texts)
        devices = [self._device] if self._device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = self._model.generate(**enc, pad_token_id=tokenizer.pad_token_id, **options)
        if self.task == "text-generation":
            out = out[:, enc["input_ids"].shape[1] :]  # the continuation, not the prompt
        decoded = tokenizer.batch_decode(out, skip_special_tokens=True)
        return {"text": _bytes_array(decoded)}

    def unload(self) -> None:
        torch = self._torch
        on_cuda = self._device.startswith("cuda")
        self._model = self._tokenizer = self._st = None
        if torch is not None and on_cuda:
            torch.cuda.empty_cache()


def generation_options(defaults: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """`generate()` keyword arguments from request parameters over model.yaml defaults.

    The sampling fields (`temperature`, `top_p`, `top_k`, `seed`) go through the platform's one
    sampling parser (`core.generate.parse_sampling`: the names, types and ranges of every
    protocol); `max_new_tokens` and `do_sample` are this runtime's own (Hugging Face's
    `generate()` vocabulary). Raises InvalidInput naming the first bad parameter. Sampling is on
    when `do_sample` says so, else when a `temperature` > 0 is given; temperature 0 is greedy.
    """

    def get(key: str) -> Any:
        return request.get(key, defaults.get(key))

    limit = int_parameter(defaults, "max_new_tokens_limit", _MAX_NEW_TOKENS_LIMIT)
    out: dict[str, Any] = {
        "max_new_tokens": _number(get("max_new_tokens"), "max_new_tokens", int, 1, limit, 32)
    }
    given = {k: get(k) for k in ("temperature", "top_p", "top_k", "seed")}
    _number(given["seed"], "seed", int, 0, 2**63 - 1, None)
    sampling = parse_sampling(given, max_tokens=None)
    do_sample = get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise InvalidField("do_sample", "must be true or false")
    if do_sample is None:
        do_sample = given["temperature"] is not None and sampling.temperature > 0
    if given["temperature"] == 0:
        do_sample = False
    out["do_sample"] = do_sample
    if do_sample:
        for key in ("temperature", "top_p", "top_k"):
            if given[key] is not None:
                out[key] = getattr(sampling, key)
    if sampling.seed is not None:
        out["seed"] = sampling.seed
    return out


def _number(value: Any, name: str, kind: type, low: float, high: float, default: Any) -> Any:
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and kind is int and not float(value).is_integer():
        ok = False
    if not ok or not math.isfinite(float(value)) or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise InvalidField(name, f"must be {what} in [{low}, {high}]")
    return kind(value)


def _bool(request: dict[str, Any], defaults: dict[str, Any], key: str, default: bool) -> bool:
    value = request.get(key, defaults.get(key, default))
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter '{key}' must be true or false")
    return value


def _texts(inputs: dict[str, np.ndarray]) -> list[str]:
    if "text" not in inputs:
        raise InvalidInput("input 'text' is required")
    texts = []
    for item in np.asarray(inputs["text"], dtype=object).ravel().tolist():
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("input 'text' must be UTF-8") from None
        texts.append(str(item))
    if not texts:
        raise InvalidInput("input 'text' holds no texts")
    return texts


def _bytes_array(values: list[str] | list[list[str]]) -> np.ndarray:
    """Strings (a list, or a list of equal-length lists) as an object array of UTF-8 bytes."""
    array = np.array(values, dtype=object)
    return np.vectorize(lambda v: str(v).encode("utf-8"), otypes=[object])(array)


def _pick_device(torch: Any, wanted: Any) -> str:
    if wanted is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    wanted = str(wanted)
    if wanted == "cpu":
        return "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError("parameter 'device' asks for cuda but CUDA is not available")
        return wanted
    raise ModelLoadError("parameter 'device' must be 'cpu' or 'cuda' (or 'cuda:N')")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelLoadError(f"{path.name} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path.name} must be a JSON object")
    return raw
