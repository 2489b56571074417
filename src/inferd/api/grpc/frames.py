"""HTTP/2 wire facts for the gRPC transport: frame types, flags, error codes, settings, the
frame header, and what this server offers its peers (RFC 9113)."""

from __future__ import annotations

import struct

import grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6
MAX_WINDOW = 2**31 - 1

FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
SETTING = struct.Struct(">HL")
U32 = struct.Struct(">L")
GOAWAY_BODY = struct.Struct(">LL")
MESSAGE_PREFIX = struct.Struct(">BL")  # gRPC message prefix: compressed flag, length

#: What this server offers its peers.
OUR_MAX_FRAME = 1 << 20
OUR_STREAM_WINDOW = 4 << 20
OUR_CONN_WINDOW = 16 << 20
OUR_MAX_STREAMS = 1024
OUR_MAX_HEADER_LIST = 32 << 10
#: A header block (HEADERS + CONTINUATION) larger than this, or decoding to a field list larger
#: than this, is a connection error; between OUR_MAX_HEADER_LIST and this, only its call fails.
MAX_HEADER_BLOCK = 4 * OUR_MAX_HEADER_LIST
#: Complete messages of a client stream waiting for its handler beyond which the stream's
#: window is no longer refilled (the client then waits).
STREAM_BACKLOG = 4 << 20
#: Client resets of running calls, net of calls answered, after which the connection is closed
#: (a client that opens and resets streams in a loop, "rapid reset", makes the server work for
#: nothing while never reaching the stream limit).
MAX_NET_RESETS = 200
#: Streams this server reset that are remembered: a client's frames already on their way
#: when the reset left are ignored (RFC 9113 §5.1), while other frames on a stream no longer
#: open are a protocol error.
RECENT_RESETS = 128
#: The payload of this server's keepalive PING.
KEEPALIVE_PING = b"inferdka"
#: Longest grpc-message sent back (the whole header block must fit one 16 KiB frame).
MAX_STATUS_MESSAGE = 4096


def frame(ftype: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return FRAME_HEADER.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


class ConnectionFault(Exception):
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamError(Exception):
    """A gRPC status to answer a stream with (raised while reading its messages)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def unpad(payload: bytes) -> bytes:
    """The payload of a PADDED frame without its pad length and padding."""
    if not payload:
        raise ConnectionFault(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionFault(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
