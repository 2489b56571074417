"""Replicas: where a loaded runtime runs (worker processes or in-process threads)."""

from inferd.workers.inprocess import InProcessReplica, Loaded, Replica, ReplicaResult
from inferd.workers.process import ProcessReplica

__all__ = ["InProcessReplica", "Loaded", "ProcessReplica", "Replica", "ReplicaResult"]
