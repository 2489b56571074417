"""Body reading and decompression caps (no sockets: a fake ASGI receive)."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib

import pytest

from inferd.api.http.body import ClientDisconnected, compress, decode_content, read_body
from inferd.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


def _receiver(*chunks: bytes, disconnect: bool = False):  # type: ignore[no-untyped-def]
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    else:
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    it = iter(messages)

    async def receive() -> dict:
        return next(it)

    return receive


async def test_reads_chunks() -> None:
    assert await read_body(_receiver(b"ab", b"cd"), None, 10) == b"abcd"


async def test_declared_length_over_cap_refused_before_reading() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body(_receiver(), 11, 10)


async def test_streamed_over_cap() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body(_receiver(b"x" * 6, b"x" * 6), None, 10)


async def test_asgi_messages_are_not_counted_as_chunks() -> None:
    # A Content-Length body read in many small pieces (a slow link) is not a chunk flood: the
    # wire chunks of a chunked body are capped by the listener protocol (http.max_chunks).
    n = 70_000  # more than the default max_chunks
    assert await read_body(_receiver(*[b"x"] * n), n, n) == b"x" * n


async def test_disconnect() -> None:
    with pytest.raises(ClientDisconnected):
        await read_body(_receiver(b"x", disconnect=True), None, 100)


def test_gzip_and_deflate_round_trip() -> None:
    data = b'{"inputs": []}' * 10
    assert decode_content(gzip.compress(data), "gzip", 1000) == data
    assert decode_content(zlib.compress(data), "deflate", 1000) == data
    assert decode_content(data, "identity", 1000) == data


def test_decompressed_cap() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    with pytest.raises(PayloadTooLarge):
        decode_content(bomb, "gzip", 999_999)
    assert len(decode_content(bomb, "gzip", 1_000_000)) == 1_000_000


def test_round_trip_over_many_pieces() -> None:
    data = os.urandom(300_000)  # incompressible: several input and output pieces
    assert decode_content(gzip.compress(data), "gzip", len(data)) == data
    assert decode_content(zlib.compress(data), "deflate", len(data)) == data


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_bomb_peak_memory_stays_near_the_cap(encoding: str) -> None:
    cap = 4 * 1024 * 1024
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else 15)
    bomb = c.compress(b"\0" * (64 * 1024 * 1024)) + c.flush()  # 64 MiB from ~64 KB
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            decode_content(bomb, encoding, cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused after about the cap: not the cap twice over (one decompress(max_length=cap)
    # builds its output in blocks, then joins them).
    assert peak < cap * 1.25, f"peak {peak / cap:.2f}x the cap"


def test_bad_encodings() -> None:
    with pytest.raises(UnsupportedMediaType, match="br"):
        decode_content(b"x", "br", 10)
    with pytest.raises(InvalidInput, match="gzip"):
        decode_content(b"not gzip", "gzip", 10)
    with pytest.raises(InvalidInput, match="truncated"):
        decode_content(gzip.compress(b"hello world")[:-8], "gzip", 100)


def test_response_compression() -> None:
    body, enc = compress(b"a" * 100, "gzip, deflate")
    assert enc == "gzip" and gzip.decompress(body) == b"a" * 100
    body, enc = compress(b"a" * 100, "deflate")
    assert enc == "deflate" and zlib.decompress(body) == b"a" * 100
    assert compress(b"a", "br") == (b"a", None)
    assert compress(b"a", "gzip;q=0, br") == (b"a", None)
    body, enc = compress(b"a" * 100, "gzip;q=0, deflate;q=0.5")
    assert enc == "deflate" and zlib.decompress(body) == b"a" * 100
