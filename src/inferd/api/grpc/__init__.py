"""The gRPC adapter: Triton's `inference.GRPCInferenceService` plus `grpc.health.v1.Health`."""

from __future__ import annotations

from inferd.api.grpc.limits import Limits
from inferd.api.grpc.server import GrpcServer

__all__ = ["GrpcServer", "Limits"]
