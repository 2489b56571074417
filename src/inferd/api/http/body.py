"""Reading request bodies under caps: size, chunk count, and decompressed size."""

from __future__ import annotations

import zlib

from starlette.types import Receive

from inferd.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


class ClientDisconnected(Exception):
    """The client went away before its body arrived."""


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(
    receive: Receive, content_length: int | None, max_bytes: int, max_chunks: int
) -> bytes:
    """Read the whole body; 413 as soon as it is over `max_bytes` (without reading the rest)."""
    if content_length is not None and content_length > max_bytes:
        raise PayloadTooLarge(
            f"request body of {content_length} bytes exceeds the limit of {max_bytes} bytes"
        )
    first = b""
    chunks: list[bytes] | None = None
    total = 0
    count = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        data = message.get("body", b"")
        if data:
            total += len(data)
            count += 1
            if total > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
            if count > max_chunks:
                raise InvalidInput(f"request body arrived in more than {max_chunks} chunks")
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
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {enc} data: {e}") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {max_bytes} bytes")
    if not d.eof:
        raise InvalidInput(f"request body is truncated {enc} data")
    return out


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
