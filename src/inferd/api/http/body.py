"""Reading request bodies under caps: size, and size after decompression."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from starlette.types import Receive

from inferd.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Caps applied to every request before decoding."""

    max_body_bytes: int = 64 * 1024 * 1024
    compress_min_bytes: int = 4096


class ClientDisconnected(Exception):
    """The client went away before its body arrived."""


#: Piece size for incremental decompression.
_STEP = 64 * 1024

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(receive: Receive, content_length: int | None, max_bytes: int) -> bytes:
    """Read the whole body; 413 as soon as it is over `max_bytes` (without reading the rest).

    The number of wire chunks (`http.max_chunks`) is capped by the listener protocol
    (`api/http/protocol.py`): ASGI messages do not map to chunks, uvicorn coalesces whatever
    arrived between two `receive()` calls into one message."""
    if content_length is not None and content_length > max_bytes:
        raise PayloadTooLarge(
            f"request body of {content_length} bytes exceeds the limit of {max_bytes} bytes"
        )
    first = b""
    chunks: list[bytes] | None = None
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        data = message.get("body", b"")
        if data:
            total += len(data)
            if total > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
            if chunks is not None:
                chunks.append(data)
            elif first:
                chunks = [first, data]
            else:
                first = data
        if not message.get("more_body", False):
            return b"".join(chunks) if chunks is not None else first


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo Content-Encoding (gzip, deflate) with a cap on the decompressed size."""
    if not encoding:
        return body
    enc = encoding.strip().lower()
    if enc == "identity":
        return body
    wbits = _WBITS.get(enc)
    if wbits is None:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding '{encoding[:32]}' (supported: gzip, deflate, identity)"
        )
    out: list[bytes] = []
    total = 0
    d = zlib.decompressobj(wbits)
    view = memoryview(body)
    try:
        # Input and output both go through in _STEP pieces: the output so that a bomb is
        # refused once it passes the cap (peak memory ~ the cap, not twice it, as one call
        # with max_length would cost), the input so that `unconsumed_tail` never copies
        # more than one piece.
        for start in range(0, len(body), _STEP):
            data: bytes | memoryview = view[start : start + _STEP]
            while True:
                piece = d.decompress(data, _STEP)
                total += len(piece)
                if total > max_bytes:
                    raise PayloadTooLarge(
                        f"decompressed request body exceeds the limit of {max_bytes} bytes"
                    )
                out.append(piece)
                data = d.unconsumed_tail
                # A full piece may leave output pending inside zlib even with no input left.
                if d.eof or (not data and len(piece) < _STEP):
                    break
            if d.eof:
                break
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {enc} data: {e}") from None
    if not d.eof:
        raise InvalidInput(f"request body is truncated {enc} data")
    return b"".join(out)


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response when the client asked for gzip or deflate."""
    if not accept_encoding:
        return body, None
    accepted = _accepted_codings(accept_encoding)
    if "gzip" in accepted:
        c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(body) + c.flush(), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None


def _accepted_codings(header: str) -> set[str]:
    """Codings an Accept-Encoding header allows (`q=0` refuses one)."""
    out = set()
    for item in header.lower().split(","):
        coding, _, params = item.partition(";")
        q = params.strip()
        if q.startswith("q="):
            try:
                if float(q[2:]) <= 0:
                    continue
            except ValueError:
                continue
        out.add(coding.strip())
    return out
