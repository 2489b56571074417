"""Open connections per client address, shared by the HTTP and gRPC listeners' caps."""

from __future__ import annotations


class ClientSlots:
    """Open connections per client address. All users run on one event loop: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def acquire(self, host: str) -> bool:
        n = self.open.get(host, 0)
        if n >= self.limit:
            return False
        self.open[host] = n + 1
        return True

    def release(self, host: str) -> None:
        n = self.open.get(host, 0) - 1
        if n > 0:
            self.open[host] = n
        else:
            self.open.pop(host, None)
