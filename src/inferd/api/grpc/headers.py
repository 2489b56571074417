"""HPACK for the gRPC transport: the constant blocks this server answers with (no dynamic
table, so they never depend on the peer's table size), `keeps_table`, which says whether a
received block may be decoded once and reused, and `inspect_fields`, which says whether a decoded
field list is a well-formed request (RFC 9113 §8.2, §8.3) and how large it is."""

from __future__ import annotations

import re
from itertools import chain

import grpc

from inferd.api.grpc.frames import MAX_STATUS_MESSAGE


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman coding."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8 with bytes outside 0x20-0x7E and '%' percent-encoded."""
    raw = message.encode("utf-8", "replace")[:MAX_STATUS_MESSAGE]
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


# `:status: 200` (static index 8) and `content-type: application/grpc` (name index 31).
RESPONSE_HEADERS = b"\x88\x0f\x10\x10application/grpc"
OK_TRAILERS = _literal(b"grpc-status", b"0")


def status_block(code: grpc.StatusCode, message: str) -> bytes:
    """The trailer fields of a status (without `:status`)."""
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message))
    return block


def http_error_block(status: int) -> bytes:
    """A plain HTTP error response to a request that is not gRPC."""
    return b"\x08" + _hpack_int(3, 7) + str(status).encode()


def _int_end(block: bytes, pos: int, prefix_mask: int) -> tuple[int, int]:
    """An HPACK integer at `pos`: (value, position after it)."""
    value = block[pos] & prefix_mask
    pos += 1
    if value < prefix_mask:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def keeps_table(block: bytes) -> bool:
    """Whether decoding `block` leaves the HPACK dynamic table unchanged (no literal with
    incremental indexing, no table size update). Only walks the representations; a malformed
    block is not cacheable."""
    pos, n = 0, len(block)
    try:
        while pos < n:
            b = block[pos]
            if b & 0x80:  # indexed field
                _, pos = _int_end(block, pos, 0x7F)
            elif (b & 0xE0) in (0x20, 0x40, 0x60):  # adds to the table or resizes it
                return False
            else:  # literal without indexing / never indexed: name index or name, then value
                index, pos = _int_end(block, pos, 0x0F)
                if not index:
                    length, pos = _int_end(block, pos, 0x7F)
                    pos += length
                length, pos = _int_end(block, pos, 0x7F)
                pos += length
    except IndexError:
        return False
    return pos == n


#: RFC 9113 §8.2.1: no field name character in 0x00-0x20, A-Z or 0x7F and above (the decoder
#: yields text, so any non-ASCII character is refused too).
_BAD_NAME = re.compile(r"[^\x21-\x40\x5b-\x7e]")
#: §8.2.2: fields of HTTP/1 connection management; `te` may only say "trailers".
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
#: §8.3.1: the request pseudo-headers, one bit each; :method, :scheme and :path are required.
_PSEUDO = {":method": 1, ":scheme": 2, ":path": 4, ":authority": 8}
_REQUIRED = 1 | 2 | 4
#: Regular field names found well-formed, so that each is checked once per process, not per call.
_GOOD_NAMES: set[str] = set()
_MAX_GOOD_NAMES = 4096


def _good_name(name: str) -> bool:
    """Whether `name` may name a regular field (remembered when it may)."""
    if name[:1] == ":" or _BAD_NAME.search(name) or name in _CONNECTION_SPECIFIC:
        return False
    if len(_GOOD_NAMES) < _MAX_GOOD_NAMES and len(name) <= 64:
        _GOOD_NAMES.add(name)
    return True


def inspect_fields(fields: list[tuple[str, str]], trailers: bool = False) -> tuple[str | None, int]:
    """Why `fields` is a malformed request header (or trailer) section, None when it is not; and,
    when it is not, its size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (names, values, 32 per
    field).

    Values must be printable (no NUL, CR, LF or other control character, as gRPC's ASCII
    metadata) without a space at either end (§8.2.1)."""
    seen = 0
    regular = False
    method = ""
    for name, value in fields:
        bit = _PSEUDO.get(name)
        if bit:
            if trailers or regular or seen & bit:
                return f"pseudo-header {name} repeated or out of place", 0
            seen |= bit
            if bit == 1:
                method = value
            elif bit == 4 and not value:
                return "empty :path", 0
        elif name in _GOOD_NAMES or _good_name(name):
            regular = True
            if name == "te" and value != "trailers":
                return "te other than trailers", 0
        else:
            return f"malformed or connection-specific field name {name[:32]!r}", 0
        if not value.isprintable() or (" " in value and (value[0] == " " or value[-1] == " ")):
            return f"malformed value of {name[:32]!r}", 0
    if not trailers and seen & _REQUIRED != _REQUIRED and method != "CONNECT":
        return "missing pseudo-header", 0
    return None, 32 * len(fields) + sum(map(len, chain.from_iterable(fields)))
