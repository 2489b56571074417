"""Replicas: where a loaded runtime runs, behind one interface (in-process threads for now)."""

from inferd.workers.inprocess import InProcessReplica, Replica, ReplicaResult

__all__ = ["InProcessReplica", "Replica", "ReplicaResult"]
