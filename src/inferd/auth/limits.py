"""Per-principal request-rate and concurrency limits, in process memory or shared through Redis.

Memory is right for one node. With several nodes behind a load balancer each node would count
only its own share, so a limit of N per minute would really be N per node; pointing every node
at the same Redis (and prefix) makes them count together.

When Redis cannot be reached the operator chooses: fail closed (refuse with `Unavailable`, the
default: a limit that silently stops limiting is a hole) or fail open (serve, and warn at most
once a minute so the log is not flooded at thousands of requests per second).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError, StorageError

from inferd.core.errors import RateLimited, Unavailable

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis

log = logging.getLogger(__name__)

#: At most one "limiter unavailable" warning per this many seconds, per limiter.
WARN_EVERY_S = 60.0
_UNAVAILABLE = "rate limiter unavailable"
#: URL scheme given by the operator → scheme the `limits` library expects for its asyncio storage.
_SCHEMES = {"redis": "async+redis", "rediss": "async+rediss", "unix": "async+redis+unix"}


def _redis_pool(url: str, socket_timeout_s: float) -> ConnectionPool:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            f"limiter storage must be a redis://, rediss:// or unix:// URL, not {scheme!r}"
        )
    # redis is the `inferd[redis]` extra: imported only when a Redis URL is configured.
    from redis.asyncio import ConnectionPool

    # Short timeouts: the limiter sits on every request, and a hung Redis must turn into a quick
    # Unavailable (or a quick pass when failing open), not a stalled request.
    return ConnectionPool.from_url(
        url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
    )


class _Outage:
    """What to do when the shared storage fails: raise, or let the request through and warn."""

    def __init__(self, what: str, fail_open: bool, clock: Callable[[], float]) -> None:
        self._what = what
        self._fail_open = fail_open
        self._clock = clock
        self._last_warning: float | None = None

    def handle(self, error: BaseException, *, may_raise: bool = True) -> None:
        if may_raise and not self._fail_open:
            raise Unavailable(_UNAVAILABLE) from error
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("%s storage unavailable, not limiting: %s", self._what, error)


class RateLimiter:
    """Requests per minute per key, over a moving 60-second window (the `limits` library).

    The window is exact: the (N+1)th request within any 60 seconds is refused, and `retry_after_s`
    says when the oldest of those N leaves the window.
    """

    def __init__(
        self,
        storage_url: str | None = None,
        prefix: str = "inferd",
        fail_open: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        socket_timeout_s: float = 0.5,
    ) -> None:
        # `clock` must read the same wall time the library stamps window entries with
        # (`time.time`); tests replace both together.
        self._clock = clock
        self._pool: ConnectionPool | None = None
        self._storage: Storage
        if storage_url is None:
            self._storage = MemoryStorage()
        else:
            self._pool = _redis_pool(storage_url, socket_timeout_s)
            scheme, rest = storage_url.split("://", 1)
            options: dict[str, Any] = {"connection_pool": self._pool}
            try:
                self._storage = RedisStorage(
                    f"{_SCHEMES[scheme]}://{rest}",
                    wrap_exceptions=True,
                    # coredis is the library's default client; inferd ships redis-py.
                    implementation="redispy",
                    key_prefix=f"{prefix}:rate",
                    **options,
                )
            except ConfigurationError as e:
                raise ValueError(f"rate limiter storage: {e}") from None
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._outage = _Outage("rate limiter", fail_open, clock)

    async def hit(self, key: str, per_minute: int) -> None:
        """Count one request for `key`; `RateLimited` when it is over `per_minute`."""
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        # The limit is part of the library's key, so a changed limit starts a fresh window.
        item = RateLimitItemPerMinute(per_minute)
        try:
            if await self._strategy.hit(item, key):
                return
            stats = await self._strategy.get_window_stats(item, key)
        except StorageError as e:
            self._outage.handle(e)
            return
        retry_after = max(1, math.ceil(stats.reset_time - self._clock()))
        raise RateLimited(
            f"rate limit of {per_minute} requests per minute exceeded; retry in {retry_after} s",
            retry_after,
        )

    async def close(self) -> None:
        """Release the Redis connections (nothing to do in memory)."""
        if self._pool is not None:
            await self._pool.aclose()


_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
"""

# Never below zero: if the key expired under a long request, its release must not leave -1
# behind (that would grant one extra slot forever after).
_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
return redis.call('DECR', KEYS[1])
"""


class ConcurrencyLimiter:
    """In-flight requests per key: `async with limiter.acquire(key, limit): ...`.

    In Redis the count lives at `<prefix>:conc:<key>` and carries an expiry (`lease_s`) that
    every acquire pushes forward. A node that dies mid-request never gives its slots back; the
    expiry bounds that leak: once the key goes `lease_s` without a new acquire, the stale count
    vanishes instead of locking the key out forever. Keep `lease_s` above the longest request.
    """

    def __init__(
        self,
        storage_url: str | None = None,
        prefix: str = "inferd",
        fail_open: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        socket_timeout_s: float = 0.5,
        lease_s: int = 600,
    ) -> None:
        if lease_s < 1:
            raise ValueError("lease_s must be at least 1")
        self._prefix = prefix
        self._lease_s = lease_s
        self._counts: dict[str, int] = {}
        self._pool: ConnectionPool | None = None
        self._redis: Redis | None = None
        if storage_url is not None:
            from redis.asyncio import Redis

            self._pool = _redis_pool(storage_url, socket_timeout_s)
            self._redis = Redis(connection_pool=self._pool)
            self._acquire_script = self._redis.register_script(_ACQUIRE)
            self._release_script = self._redis.register_script(_RELEASE)
        self._outage = _Outage("concurrency limiter", fail_open, clock)

    def in_flight(self, key: str) -> int:
        """Requests now counted for `key` in memory (always 0 with Redis; read Redis for that)."""
        return self._counts.get(key, 0)

    @asynccontextmanager
    async def acquire(self, key: str, limit: int) -> AsyncIterator[None]:
        """Hold one of `limit` slots for `key` for the block; `RateLimited` when all are taken."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        counted = await self._take(key, limit)
        try:
            yield
        finally:
            if counted:
                # Shielded: a request cancelled while giving its slot back must still give it.
                await asyncio.shield(self._give(key))

    async def _take(self, key: str, limit: int) -> bool:
        """True when a slot was counted (and must be given back); False when failing open."""
        if self._redis is None:
            # No await between the check and the increment: atomic on the event loop.
            n = self._counts.get(key, 0)
            if n >= limit:
                raise _too_many(limit)
            self._counts[key] = n + 1
            return True
        from redis.exceptions import RedisError

        try:
            ok = await self._acquire_script(keys=[self._key(key)], args=[limit, self._lease_s])
        except (RedisError, OSError) as e:
            self._outage.handle(e)
            return False
        if not ok:
            raise _too_many(limit)
        return True

    async def _give(self, key: str) -> None:
        if self._redis is None:
            n = self._counts.get(key, 0) - 1
            if n > 0:
                self._counts[key] = n
            else:
                self._counts.pop(key, None)
            return
        from redis.exceptions import RedisError

        try:
            await self._release_script(keys=[self._key(key)])
        except (RedisError, OSError) as e:
            # The request is done and answered; failing it now would help no one. The lease
            # expiry clears the slot we could not give back.
            self._outage.handle(e, may_raise=False)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:conc:{key}"

    async def close(self) -> None:
        """Release the Redis connections (nothing to do in memory)."""
        if self._pool is not None:
            await self._pool.aclose()


def _too_many(limit: int) -> RateLimited:
    return RateLimited(f"too many concurrent requests (limit {limit}); retry shortly", 1)
