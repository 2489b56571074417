"""Replicas: where a loaded runtime runs (worker processes or in-process threads).

The exports are imported on first use: a worker process imports this package before it has
isolated itself (`sandbox`), and must not start threads (numpy's BLAS pool does) before that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferd.workers.inprocess import InProcessReplica, Loaded, Replica, ReplicaResult
    from inferd.workers.process import ProcessReplica

_EXPORTS = {"InProcessReplica": "inprocess", "Loaded": "inprocess", "Replica": "inprocess",
            "ReplicaResult": "inprocess", "ProcessReplica": "process"}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inferd.workers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"inferd.workers.{module}"), name)


__all__ = ["InProcessReplica", "Loaded", "ProcessReplica", "Replica", "ReplicaResult"]
