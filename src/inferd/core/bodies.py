"""The request dialects a stored request (an async prediction, a batch line) can be written
in, and how one is recognised from its body alone.

`v2` is an Open Inference Protocol infer body, `v1` a KServe V1 predict body, `openai.*` the
body of the OpenAI route of that name. A body that names its dialect is taken at its word;
otherwise the shape decides: `messages` is a chat, `instances` V1, `inputs` as a list of named
tensors V2, `prompt` a completion (an image model answers it as an image generation), a
string or a list of strings under `input` embeddings.
"""

from __future__ import annotations

from typing import Any

from inferd.core.errors import InvalidInput

V2 = "v2"
V1 = "v1"
CHAT = "openai.chat"
COMPLETIONS = "openai.completions"
EMBEDDINGS = "openai.embeddings"
IMAGES = "openai.images"
APIS = (V2, V1, CHAT, COMPLETIONS, EMBEDDINGS, IMAGES)

#: The OpenAI route each `openai.*` dialect is the body of (the batch file format names these).
OPENAI_URLS = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/images/generations": IMAGES,
}


def body_api(body: Any, api: Any = None, field: str = "input") -> str:
    """The dialect of `body` (`api` when the caller named one); InvalidInput naming `field`
    when it is none of them."""
    if api is not None:
        if api not in APIS:
            raise InvalidInput(f"api: must be one of {', '.join(APIS)}")
        if not isinstance(body, dict):
            raise InvalidInput(f"{field}: must be a JSON object")
        return str(api)
    if not isinstance(body, dict):
        raise InvalidInput(f"{field}: must be a JSON object (a V2, V1 or OpenAI request body)")
    inputs = body.get("inputs")
    if (
        isinstance(inputs, list)
        and inputs
        and all(isinstance(t, dict) and "name" in t and "datatype" in t for t in inputs)
    ):
        return V2
    if "messages" in body:
        return CHAT
    if "instances" in body or "inputs" in body:
        return V1
    if "prompt" in body:
        return COMPLETIONS
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(
            isinstance(t, str) for t in raw)):  # fmt: skip
        return EMBEDDINGS
    raise InvalidInput(
        f"{field}: not a request body inferd knows: a V2 body has `inputs` (named tensors), "
        "V1 `instances`, an OpenAI chat `messages`, a completion `prompt`, embeddings `input`"
    )
