"""Calibration server: raw ASGI on uvicorn (uvloop + httptools), no model call.

It answers every POST with a fixed V2 response and ``GET /v2/health/ready`` with 200, so a run
against it measures the ceiling of the HTTP stack plus the load generator on this machine (the
DESIGN.md "raw ASGI with no model call" row, ~13,000 infer/s). If the generator cannot drive
this far above the real servers' figures, it is the bottleneck.

    python bench/peers/raw_asgi.py --port 18300
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

_RESPONSE = orjson.dumps(
    {
        "model_name": "raw",
        "outputs": [{"name": "output", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}],
    }
)
_HEADERS = [(b"content-type", b"application/json")]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Read the whole body, check it is JSON, answer the fixed response."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    if body:
        orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _RESPONSE if body else b""})


def main() -> None:
    """Serve on 127.0.0.1:PORT, one process, no access log."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18300)
    args = ap.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
