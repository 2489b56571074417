"""What the native gRPC transport allows a client: message size, bytes buffered, timeouts.

`Limits` carries `GrpcSettings`' fields of the same names (`Limits.of(settings)`); `Budget` is
the count of request bytes buffered by every connection of one server, shared by them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

#: The default largest message (as the REST body limit).
DEFAULT_MAX_MESSAGE = 64 << 20
#: The longest a connection's timer sleeps: timeouts are checked at most this late.
MAX_TICK_S = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-server limits of the native transport (see docs/grpc-api.md#limits).

    Buffered bytes are request bytes received but not yet taken by a handler: partial
    messages, complete ones waiting for their handler, and decompressed output being produced.
    An idle, read or keepalive interval of 0 turns that check off.
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_buffered_bytes_per_connection: int = 256 << 20
    max_buffered_bytes_total: int = 1 << 30
    idle_timeout_s: float = 300.0
    read_timeout_s: float = 30.0
    keepalive_interval_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connections_per_client: int = 256

    @classmethod
    def of(cls, settings: object) -> Limits:
        """The limits named by an object with the same attributes (`GrpcSettings`)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def tick_s(self) -> float:
        """How often a connection checks its timeouts (0: no timeout is on, no timer).

        A quarter of the shortest timeout, so each fires at most 25% late, and never more
        than `MAX_TICK_S` apart.
        """
        timeouts = [
            t
            for t in (self.idle_timeout_s, self.read_timeout_s, self.keepalive_interval_s)
            if t > 0
        ]
        if self.keepalive_interval_s > 0:
            timeouts.append(self.keepalive_timeout_s)
        return min(MAX_TICK_S, min(timeouts) / 4) if timeouts else 0.0


class Budget:
    """Request bytes buffered by all the connections of one server, and the most allowed."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
