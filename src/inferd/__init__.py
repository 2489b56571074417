"""inferd: self-hosted model serving (Open Inference Protocol V2, KServe V1)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
