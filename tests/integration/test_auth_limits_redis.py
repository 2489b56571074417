"""Rate and concurrency limits through a real Redis, shared by two limiter instances ("nodes"),
and what happens when Redis cannot be reached."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from inferd.auth.limits import ConcurrencyLimiter, RateLimiter
from inferd.core.errors import RateLimited, Unavailable

#: Nothing listens on port 1: connections are refused at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def inspect(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def rate_nodes(redis_url: str, redis_prefix: str) -> AsyncIterator[list[RateLimiter]]:
    nodes = [RateLimiter(redis_url, prefix=redis_prefix) for _ in range(2)]
    yield nodes
    for node in nodes:
        await node.close()


@pytest.fixture
async def conc_nodes(redis_url: str, redis_prefix: str) -> AsyncIterator[list[ConcurrencyLimiter]]:
    nodes = [ConcurrencyLimiter(redis_url, prefix=redis_prefix, lease_s=120) for _ in range(2)]
    yield nodes
    for node in nodes:
        await node.close()


async def test_two_nodes_share_one_rate_limit(
    rate_nodes: list[RateLimiter], inspect: redis.Redis, redis_prefix: str
) -> None:
    a, b = rate_nodes
    await a.hit("u1", 3)
    await b.hit("u1", 3)
    await a.hit("u1", 3)
    for node in (a, b):
        with pytest.raises(RateLimited) as e:
            await node.hit("u1", 3)
        assert 50 <= e.value.retry_after_s <= 60
    await b.hit("u2", 3)  # per key
    # Every key lives under the prefix (so the fixture, and operators, can find them).
    assert list(inspect.scan_iter(match=f"{redis_prefix}*"))
    assert not [k for k in inspect.scan_iter(match="*u1*") if not k.startswith(redis_prefix)]


async def test_another_prefix_is_another_limit(
    redis_url: str, redis_prefix: str, rate_nodes: list[RateLimiter]
) -> None:
    a, _ = rate_nodes
    await a.hit("u1", 1)
    with pytest.raises(RateLimited):
        await a.hit("u1", 1)
    other = RateLimiter(redis_url, prefix=f"{redis_prefix}-other")
    try:
        await other.hit("u1", 1)
    finally:
        await other.close()


async def test_two_nodes_share_one_concurrency_limit(
    conc_nodes: list[ConcurrencyLimiter], inspect: redis.Redis, redis_prefix: str
) -> None:
    a, b = conc_nodes
    key = f"{redis_prefix}:conc:u1"
    async with a.acquire("u1", 2), b.acquire("u1", 2):
        assert inspect.get(key) == "2"
        assert 0 < inspect.ttl(key) <= 120
        for node in (a, b):
            with pytest.raises(RateLimited) as e:
                async with node.acquire("u1", 2):
                    pytest.fail("a third request got in")
            assert e.value.retry_after_s == 1
        assert inspect.get(key) == "2"  # refused acquires took nothing
    assert inspect.get(key) is None  # released to zero: the key is gone, not left at 0 or -1
    async with b.acquire("u1", 2):
        assert inspect.get(key) == "1"


async def test_each_acquire_refreshes_the_expiry(
    conc_nodes: list[ConcurrencyLimiter], inspect: redis.Redis, redis_prefix: str
) -> None:
    a, b = conc_nodes
    key = f"{redis_prefix}:conc:u1"
    async with a.acquire("u1", 5):
        inspect.expire(key, 7)  # as if the lease had been running for a while
        async with b.acquire("u1", 5):
            assert inspect.ttl(key) > 100


async def test_release_never_goes_below_zero(
    conc_nodes: list[ConcurrencyLimiter], inspect: redis.Redis, redis_prefix: str
) -> None:
    a, _ = conc_nodes
    key = f"{redis_prefix}:conc:u1"
    async with a.acquire("u1", 1):
        inspect.delete(key)  # the lease expired under a very long request
    assert inspect.get(key) is None
    async with a.acquire("u1", 1):
        assert inspect.get(key) == "1"


# ---- Redis unreachable ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_unreachable_redis_fails_closed_by_default() -> None:
    rate = RateLimiter(DEAD_REDIS, socket_timeout_s=0.2)
    conc = ConcurrencyLimiter(DEAD_REDIS, socket_timeout_s=0.2)
    try:
        with pytest.raises(Unavailable) as e:
            await rate.hit("u1", 10)
        assert e.value.message == "rate limiter unavailable"
        with pytest.raises(Unavailable):
            async with conc.acquire("u1", 2):
                pytest.fail("ran without a limiter while failing closed")
    finally:
        await rate.close()
        await conc.close()


async def test_unreachable_redis_fails_open_and_warns_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    rate = RateLimiter(DEAD_REDIS, fail_open=True, clock=clock, socket_timeout_s=0.2)
    conc = ConcurrencyLimiter(DEAD_REDIS, fail_open=True, clock=clock, socket_timeout_s=0.2)
    caplog.set_level(logging.WARNING, logger="inferd.auth.limits")
    try:
        for _ in range(3):
            await rate.hit("u1", 1)  # over the limit too: nothing counts while Redis is down
        ran = 0
        for _ in range(3):
            async with conc.acquire("u1", 1), conc.acquire("u1", 1):
                ran += 1
        assert ran == 3

        def warnings() -> int:
            return sum(r.levelno == logging.WARNING for r in caplog.records)

        assert warnings() == 2  # one per limiter, not one per request
        clock.now += 30
        await rate.hit("u1", 1)
        assert warnings() == 2
        clock.now += 31
        await rate.hit("u1", 1)
        assert warnings() == 3
    finally:
        await rate.close()
        await conc.close()


async def test_release_during_an_outage_does_not_fail_the_request(
    redis_url: str, redis_prefix: str, inspect: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    conc = ConcurrencyLimiter(redis_url, prefix=redis_prefix, lease_s=120, socket_timeout_s=0.2)
    caplog.set_level(logging.WARNING, logger="inferd.auth.limits")
    try:
        async with conc.acquire("u1", 1):
            # Redis goes away mid-request: the release cannot reach it.
            async def unreachable(**_: object) -> None:
                raise redis.ConnectionError("connection refused")

            conc._release_script = unreachable  # type: ignore[assignment]
        # Fail-closed refuses new work, but the finished request is not turned into an error;
        # its slot stays counted until the lease expires.
        assert inspect.get(f"{redis_prefix}:conc:u1") == "1"
        assert any(r.levelno == logging.WARNING for r in caplog.records)
    finally:
        await conc.close()
