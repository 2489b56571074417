"""Rate and concurrency limits in memory, on a fake clock (no sleeping, no sockets)."""

from __future__ import annotations

import asyncio
import types

import limits.aio.storage.memory as limits_memory
import pytest

from inferd.auth.limits import ConcurrencyLimiter, RateLimiter
from inferd.core.errors import RateLimited

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """One fake wall clock for both the limiter and the `limits` memory storage's timestamps."""
    fake = FakeClock()
    monkeypatch.setattr(limits_memory, "time", types.SimpleNamespace(time=fake))
    return fake


@pytest.fixture
def rate(clock: FakeClock) -> RateLimiter:
    return RateLimiter(clock=clock)


async def test_allows_the_limit_then_refuses(rate: RateLimiter) -> None:
    for _ in range(5):
        await rate.hit("u1", 5)
    with pytest.raises(RateLimited) as e:
        await rate.hit("u1", 5)
    assert "5 requests per minute" in e.value.message
    assert e.value.retry_after_s == 60
    # Other keys have their own budget.
    await rate.hit("u2", 5)


async def test_window_moves_and_retry_after_says_when(rate: RateLimiter, clock: FakeClock) -> None:
    for t in (0, 10, 20):
        clock.now = T0 + t
        await rate.hit("u1", 3)
    clock.now = T0 + 30.6
    with pytest.raises(RateLimited) as e:
        await rate.hit("u1", 3)
    assert e.value.retry_after_s == 30  # the hit at t=0 leaves at t=60: 29.4 s, rounded up
    clock.now = T0 + 60.5
    await rate.hit("u1", 3)  # that slot is free again
    clock.now = T0 + 61
    with pytest.raises(RateLimited) as e:
        await rate.hit("u1", 3)
    assert e.value.retry_after_s == 9  # next to leave: the hit at t=10, at t=70


async def test_refused_hits_do_not_extend_the_wait(rate: RateLimiter, clock: FakeClock) -> None:
    await rate.hit("u1", 1)
    for t in (1, 20, 40):
        clock.now = T0 + t
        with pytest.raises(RateLimited):
            await rate.hit("u1", 1)
    clock.now = T0 + 60.01
    await rate.hit("u1", 1)


async def test_retry_after_is_at_least_one_second(rate: RateLimiter, clock: FakeClock) -> None:
    await rate.hit("u1", 1)
    clock.now = T0 + 59.9
    with pytest.raises(RateLimited) as e:
        await rate.hit("u1", 1)
    assert e.value.retry_after_s == 1


async def test_per_minute_must_be_positive(rate: RateLimiter) -> None:
    with pytest.raises(ValueError):
        await rate.hit("u1", 0)


def test_storage_url_must_be_redis() -> None:
    with pytest.raises(ValueError):
        RateLimiter("memcached://127.0.0.1:11211")
    with pytest.raises(ValueError):
        ConcurrencyLimiter("http://127.0.0.1:6379")


async def test_close_in_memory_is_harmless(rate: RateLimiter) -> None:
    await rate.close()
    await ConcurrencyLimiter().close()


# ---- concurrency ---------------------------------------------------------------------------


async def test_concurrency_allows_limit_in_flight() -> None:
    conc = ConcurrencyLimiter()
    async with conc.acquire("u1", 2), conc.acquire("u1", 2):
        assert conc.in_flight("u1") == 2
        with pytest.raises(RateLimited) as e:
            async with conc.acquire("u1", 2):
                pytest.fail("a third request got in")
        assert e.value.retry_after_s == 1
        assert "too many concurrent requests" in e.value.message
        assert conc.in_flight("u1") == 2  # the refused one took nothing
        async with conc.acquire("u2", 2):  # another key is unaffected
            pass
    assert conc.in_flight("u1") == 0
    assert conc._counts == {}  # no counter left behind for idle keys


async def test_concurrency_releases_on_error() -> None:
    conc = ConcurrencyLimiter()
    with pytest.raises(RuntimeError):
        async with conc.acquire("u1", 1):
            raise RuntimeError("model failed")
    async with conc.acquire("u1", 1):
        assert conc.in_flight("u1") == 1


async def test_concurrency_releases_on_cancel() -> None:
    conc = ConcurrencyLimiter()
    inside = asyncio.Event()

    async def request() -> None:
        async with conc.acquire("u1", 1):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(request())
    await inside.wait()
    assert conc.in_flight("u1") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # let the shielded release finish
    assert conc.in_flight("u1") == 0


async def test_concurrency_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        async with ConcurrencyLimiter().acquire("u1", 0):
            pass
