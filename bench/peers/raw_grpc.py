"""Calibration server: a bare grpcio server answering ``ModelInfer`` with fixed bytes, no model.

Generic handlers with no (de)serializers: ``ModelInfer`` returns one prebuilt
``ModelInferResponse`` (output ``output`` FP32 [1,10], the size of ``mlp``'s answer),
``ServerReady`` / ``ModelReady`` answer ``ready: true``. A run against it measures the ceiling
of grpcio + the load generator on this machine; ``bench/grpc_load.py`` also reports the
generator's own CPU per request, which bounds the generator alone.

    python bench/peers/raw_grpc.py --port 18301 [--mode sync --threads 8]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

_SERVICE = "inference.GRPCInferenceService"


def _response() -> bytes:
    try:
        from tritonclient.grpc import service_pb2 as pb
    except ImportError:  # any 75-byte answer will do
        return b"\n\x03raw" + b"\0" * 70
    resp = pb.ModelInferResponse(model_name="raw", model_version="1")
    out = resp.outputs.add(name="output", datatype="FP32")
    out.shape.extend([1, 10])
    resp.raw_output_contents.append(struct.pack("<10f", *([0.0] * 10)))
    return bytes(resp.SerializeToString())


_ANSWERS = {"ModelInfer": _response(), "ServerReady": b"\x08\x01", "ModelReady": b"\x08\x01"}


def _handler(answer: bytes, is_async: bool) -> grpc.RpcMethodHandler:
    fn: Callable[..., Any]
    if is_async:

        async def fn(request: bytes, context: Any) -> bytes:
            return answer

    else:

        def fn(request: bytes, context: Any) -> bytes:
            return answer

    return grpc.unary_unary_rpc_method_handler(fn)


def handlers(is_async: bool) -> grpc.GenericRpcHandler:
    """The three RPCs as one generic handler (bytes in, bytes out)."""
    methods = {name: _handler(ans, is_async) for name, ans in _ANSWERS.items()}
    return grpc.method_handlers_generic_handler(_SERVICE, methods)


async def serve_aio(port: int) -> None:
    """grpc.aio server (the servers under test all use grpc.aio)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handlers(True),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def serve_sync(port: int, threads: int) -> None:
    """Classic grpcio server with a thread pool."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((handlers(False),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(sig, lambda *_: server.stop(0.5))
    server.wait_for_termination()


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=18301)
    ap.add_argument("--mode", choices=["aio", "sync"], default="aio")
    ap.add_argument("--threads", type=int, default=8, help="sync mode's thread pool")
    args = ap.parse_args()
    if args.mode == "aio":
        asyncio.run(serve_aio(args.port))
    else:
        serve_sync(args.port, args.threads)


if __name__ == "__main__":
    main()
