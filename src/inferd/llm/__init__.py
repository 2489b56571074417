"""The LLM engine: continuous batching of text generation over Hugging Face models.

`LLMEngine` and `EngineStats` are imported on first use, so importing this package (or the pure
`inferd.llm.scheduler` policy) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.llm.engine import EngineStats, LLMEngine

__all__ = ["EngineStats", "LLMEngine"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from inferd.llm import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
