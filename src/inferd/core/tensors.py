"""Core request / response types. Pure: numpy only, no web or RPC types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    """A named tensor. `data` is a numpy array already shaped; BYTES are object arrays of bytes."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: Parameters | None = None

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with its parameters (binary_data, classification)."""

    name: str
    parameters: Parameters | None = None


@dataclass(slots=True)
class InferenceRequest:
    """One inference call as the engine sees it, whatever protocol brought it."""

    inputs: list[Tensor]
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[RequestedOutput] | None = None
    #: Seconds the client allows (from a header or gRPC deadline); None = no limit.
    timeout_s: float | None = None
    #: Called (in the request's task) if the request has to wait in a queue; adapters use it
    #: to start watching for a client disconnect only when that can save work.
    on_queued: Callable[[], None] | None = None


@dataclass(slots=True)
class InferenceResponse:
    """The engine's answer; adapters encode it for their wire."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: Parameters | None = None


@dataclass(slots=True)
class Timings:
    """Nanosecond durations of one request's phases, for stats and metrics."""

    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    extra: dict[str, int] = field(default_factory=dict)
