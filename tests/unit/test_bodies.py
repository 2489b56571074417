"""Which dialect a stored request body is in (`inferd.core.bodies`)."""

from __future__ import annotations

import typing

import pytest

from inferd.core import bodies
from inferd.core.errors import InvalidInput

V2 = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}


@pytest.mark.parametrize(
    ("body", "api"),
    [
        (V2, bodies.V2),
        ({"instances": [[1, 2]]}, bodies.V1),
        ({"inputs": {"X": [1, 2]}}, bodies.V1),  # V1 columns
        ({"inputs": [[1, 2]]}, bodies.V1),  # V1 rows, not named tensors
        ({"messages": [{"role": "user", "content": "hi"}]}, bodies.CHAT),
        ({"prompt": "once upon"}, bodies.COMPLETIONS),
        ({"input": "a sentence"}, bodies.EMBEDDINGS),
        ({"input": ["a", "b"]}, bodies.EMBEDDINGS),
    ],
)
def test_a_body_is_recognised_by_its_fields(body: dict[str, object], api: str) -> None:
    assert bodies.body_api(body) == api


def test_a_named_dialect_is_taken_at_its_word_and_checked() -> None:
    assert bodies.body_api({"prompt": "a cat"}, bodies.IMAGES) == bodies.IMAGES
    with pytest.raises(InvalidInput, match=r"^api: must be one of"):
        bodies.body_api(V2, "v3")
    with pytest.raises(InvalidInput, match=r"^input: must be a JSON object"):
        bodies.body_api([1, 2], bodies.V2)


@pytest.mark.parametrize("body", [{"rows": [1]}, {"input": 3}, {"input": []}, "text", None])
def test_a_body_of_no_known_dialect_names_the_field(body: object) -> None:
    with pytest.raises(InvalidInput, match=r"^input: "):
        bodies.body_api(body)


def test_the_api_schema_lists_every_dialect() -> None:
    from inferd.api.admin.predictions import Dialect

    assert typing.get_args(Dialect) == bodies.APIS
