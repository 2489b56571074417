"""Running a built server under uvicorn: in the foreground (CLI) or on a thread (Python API)."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from inferd.api.http.protocol import protocol_class
from inferd.app import Server, build
from inferd.observability.logs import configure_logging
from inferd.settings import Settings


def _config(server: Server, sock_port: int) -> uvicorn.Config:
    s = server.settings
    return uvicorn.Config(
        server.asgi,
        host=s.http.host,
        port=sock_port,
        loop="uvloop",
        # httptools, plus head/body deadlines and header, chunk and per-client caps
        http=protocol_class(s.http),
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=s.log_level,
        timeout_graceful_shutdown=math.ceil(s.shutdown_grace_s),
        timeout_keep_alive=math.ceil(s.http.keep_alive_timeout_s),
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* are not trusted unless a proxy is configured
        date_header=False,
    )


class _Server(uvicorn.Server):
    """Graceful shutdown on SIGTERM: readiness turns 503 and new requests are refused at once,
    while the listeners stay open; once in-flight requests finish (or the grace passes) the
    server stops and the process exits 0. A second signal, or SIGINT, stops at once."""

    def __init__(self, config: uvicorn.Config, server: Server) -> None:
        super().__init__(config)
        self.inferd = server
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._draining is None and not self.should_exit:
            loop = asyncio.get_event_loop()
            self.inferd.engine.begin_drain()
            self._draining = loop.create_task(self._drain())
            return
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)  # a drained shutdown is a clean exit (0)

    async def _drain(self) -> None:
        grace = self.inferd.settings.shutdown_grace_s
        drained = await self.inferd.engine.drained(grace)
        logging.getLogger("inferd.runner").info(
            "SIGTERM: %s, stopping", "in-flight requests done" if drained else "grace period over"
        )
        self.should_exit = True


def run(settings: Settings, models: dict[str, Any] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (the `inferd serve` command)."""
    configure_logging(settings.log_level, settings.http.access_log)
    server = build(settings, models)
    _Server(_config(server, settings.http.port), server).run()


class RunningServer:
    """A server on a background thread: `url`, `grpc_port` (None without gRPC), `engine`,
    and `stop()`."""

    def __init__(self, server: Server, uv: uvicorn.Server, thread: threading.Thread, port: int):
        self.server = server
        self.engine = server.engine
        self._uv = uv
        self._thread = thread
        self.port = port
        self.url = f"http://{server.settings.http.host}:{port}"
        self.grpc_port = server.grpc.port if server.grpc else None

    def stop(self, timeout: float = 30.0) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_in_thread(
    settings: Settings, models: dict[str, Any] | None = None, timeout: float = 60.0
) -> RunningServer:
    """Start a server on a thread and wait until it is ready (or raise)."""
    server = build(settings, models)
    port = settings.http.port
    if port == 0:
        with socket.socket() as s:
            s.bind((settings.http.host, 0))
            port = s.getsockname()[1]
    uv = uvicorn.Server(_config(server, port))
    thread = threading.Thread(target=lambda: asyncio.run(uv.serve()), daemon=True, name="inferd")
    thread.start()
    deadline = time.monotonic() + timeout
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("inferd did not start")
        time.sleep(0.02)
    return RunningServer(server, uv, thread, port)
