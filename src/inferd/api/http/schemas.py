"""The data-plane bodies as the OpenAPI document shows them (`/openapi.json`, `/docs`).

These models describe the wire format; they are not used to parse or write it (the routes read
JSON with `v2codec.loads` and check fields themselves, so every error keeps its protocol's
dialect, and no per-request model tree is built). Fields a request or answer may leave out are
optional here; answers may carry more fields than listed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---- errors ---------------------------------------------------------------------------------


class Error(BaseModel):
    """The error body of the V2 / KServe V1 / health / repository routes."""

    error: str = Field(examples=["Request for unknown model: 'm' is not found"])


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(description="The request field at fault, if any")
    code: int = Field(description="The HTTP status")


class OpenAIError(BaseModel):
    """The error body of the OpenAI routes."""

    error: OpenAIErrorDetail


# ---- health, server, models -----------------------------------------------------------------


class Alive(BaseModel):
    status: Literal["alive"]


class ServerMetadata(BaseModel):
    name: str = Field(examples=["inferd"])
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool
    error: str | None = None


class Ready(BaseModel):
    ready: bool
    error: str | None = None


class ModelList(BaseModel):
    models: list[str] = Field(description="Every known model the caller may see, in any state")


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="Full shape, batch dimension included; -1 variable")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(examples=["onnx_onnxv1"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool
    error: str | None = None


class ModelStats(BaseModel):
    model_stats: list[dict[str, Any]] = Field(
        description="One Triton-style statistics entry per served version (durations in ns)"
    )


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="Only the models that are ready")


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str = Field(examples=["READY"])
    reason: str | None = None
    replicas: dict[str, int] | None = Field(
        None, description="Served versions: `total`, `healthy`, `restarts`, `queued`"
    )


class RepositoryLoadRequest(BaseModel):
    parameters: dict[str, Any] | None = Field(
        None, description="`config`: a model configuration (JSON text or object) to load with"
    )


class Loaded(BaseModel):
    name: str
    load: bool


class Unloaded(BaseModel):
    name: str
    unload: bool


# ---- V2 inference ---------------------------------------------------------------------------


class RequestInput(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int]
    data: Any = Field(None, description="Flat or nested, row-major; absent for binary inputs")
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: this input's bytes follow the JSON header"
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data` (bool), `classification` (top k)"
    )


class InferRequest(BaseModel):
    """An Open Inference Protocol V2 request (JSON, or a JSON header followed by binary tensor
    data, its length in the `Inference-Header-Content-Length` header)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(None, description="Flat, row-major; absent for binary outputs")
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class PredictRequest(BaseModel):
    """KServe V1: rows (`instances`) or columns (`inputs`)."""

    instances: Any = Field(None, examples=[[[5.1, 3.5, 1.4, 0.2]]])
    inputs: Any = None


class Predictions(BaseModel):
    predictions: Any


class GenerateRequest(BaseModel):
    """Triton's generate extension. Sampling fields may also sit at the top level."""

    id: str | None = None
    text_input: str = Field(min_length=1, examples=["Once upon a time"])
    parameters: dict[str, Any] | None = Field(
        None,
        description="Sampling: max_tokens, temperature, top_p, top_k, seed, stop, "
        "stop_token_ids, repetition_penalty, presence_penalty, frequency_penalty, "
        "ignore_eos, min_tokens",
        examples=[{"max_tokens": 16, "temperature": 0}],
    )


class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model_name: str
    model_version: str
    text_output: str
    finish_reason: str | None = Field(None, examples=["stop", "length"])
    usage: GenerateUsage | None = None


# ---- OpenAI ---------------------------------------------------------------------------------


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A served model's name")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(examples=["Once upon a time"])


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """`text_completion` (choices with `text`) or `chat.completion` (choices with `message`);
    with `stream: true`, Server-Sent Events of chunks ending with `data: [DONE]`."""

    id: str
    object: str = Field(examples=["text_completion", "chat.completion"])
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage


class EmbeddingsRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


class Embeddings(BaseModel):
    id: str
    object: Literal["list"]
    created: int
    model: str
    data: list[dict[str, Any]]
    usage: dict[str, int]


class ImagesRequest(BaseModel):
    model: str
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=4)
    size: str | None = Field(None, examples=["512x512"])
    response_format: Literal["b64_json"] | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None


class Images(BaseModel):
    created: int
    data: list[dict[str, Any]] = Field(description='`[{"b64_json", "revised_prompt": null}]`')


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class V1Models(BaseModel):
    """One document both KServe V1 (`models`) and OpenAI (`object`, `data`) clients read."""

    models: list[str]
    object: Literal["list"]
    data: list[OpenAIModel]


class V1Model(BaseModel):
    """KServe V1 readiness and OpenAI's `Model` in one document."""

    name: str
    version: str | None = None
    ready: bool
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


#: Models that only describe request bodies: the routes' OpenAPI `requestBody` names them, and
#: `routes.openapi` adds them to the document's components.
REQUEST_BODIES: tuple[type[BaseModel], ...] = (
    RepositoryIndexRequest, RepositoryLoadRequest, InferRequest, PredictRequest, GenerateRequest,
    CompletionRequest, ChatCompletionRequest, EmbeddingsRequest, ImagesRequest,
)  # fmt: skip
