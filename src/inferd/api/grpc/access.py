"""One access-log line per RPC on `inferd.access`, shaped like the REST adapter's."""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from inferd.observability.logs import ACCESS_LOGGER

access = logging.getLogger(ACCESS_LOGGER)


def log_rpc(method: str, request: Any, code: grpc.StatusCode, start_ns: int) -> None:
    """Log one RPC (or one request of a stream): method, model, version, status, latency."""
    if access.disabled or not access.isEnabledFor(logging.INFO):
        return
    fields = {
        "protocol": "grpc",
        "method": method,
        "status": code.name,
        "latency_ms": round((time.perf_counter_ns() - start_ns) / 1e6, 3),
        "model": getattr(request, "model_name", None) or getattr(request, "name", None) or None,
        "version": (
            getattr(request, "model_version", None) or getattr(request, "version", None) or None
        ),
        "request_id": (getattr(request, "id", None) or None),
    }
    access.info("rpc", extra={"fields": fields})
