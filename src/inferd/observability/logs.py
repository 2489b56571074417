"""Structured logging: one JSON line per request on the `inferd.access` logger."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

ACCESS_LOGGER = "inferd.access"


class JsonFormatter(logging.Formatter):
    """Render records as one JSON object per line, merging `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "info", access_log: bool = True) -> None:
    """Send inferd's logs to stderr as JSON lines; silence uvicorn's own access log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("inferd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger(ACCESS_LOGGER).disabled = not access_log
    logging.getLogger("uvicorn.access").disabled = True


def now_ns() -> int:
    return time.perf_counter_ns()
