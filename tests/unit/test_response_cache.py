"""The response cache's pure parts (key, encoding, LRU by bytes, config field) and the engine's
use of it over thread replicas (no sockets, no processes)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferd.core.datatypes import DATATYPES, NUMPY_DTYPES
from inferd.core.errors import InvalidInput, ModelExecutionError
from inferd.core.spec import TensorSpec, parse_model_config, spec_to_config
from inferd.core.tensors import InferenceRequest, RequestedOutput, Tensor
from inferd.observability.metrics import ServingMetrics
from inferd.runtimes.object import ObjectRuntime
from inferd.serving.engine import InferenceEngine
from inferd.serving.response_cache import (
    MemoryStore,
    ResponseCache,
    Uncacheable,
    cache_key,
    decode_outputs,
    encode_outputs,
    open_response_cache,
)
from inferd.serving.stats import VersionStats

SPECS = {"X": TensorSpec("X", "FP32", (-1,)), "S": TensorSpec("S", "BYTES", (-1,))}


def key(
    inputs: dict[str, np.ndarray] | None = None,
    params: dict[str, Any] | None = None,
    outputs: list[str] | None = None,
    model: str = "m",
    version: str = "1",
) -> bytes:
    if inputs is None:
        inputs = {"X": np.array([1, 2, 3], np.float32)}
    return cache_key(model, version, inputs, SPECS, outputs, params)


def bytes_array(*items: object) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


# ---- the key -------------------------------------------------------------------------------


def test_key_is_a_32_byte_digest_stable_for_identical_requests() -> None:
    k = key(params={"a": 1, "b": [1, 2]})
    assert len(k) == 32
    assert k == key(params={"b": [1, 2], "a": 1})  # parameter order does not matter


def test_key_ignores_input_order_and_memory_layout() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = bytes_array(b"a", b"b")
    a = cache_key("m", "1", {"X": x, "S": s}, SPECS, None, None)
    b = cache_key("m", "1", {"S": s, "X": np.asfortranarray(x)}, SPECS, None, None)
    c = cache_key("m", "1", {"S": s, "X": x.T.copy().T}, SPECS, None, None)
    assert a == b == c


def test_key_changes_with_everything_that_changes_the_answer() -> None:
    base = key()
    others = [
        key(model="other"),
        key(version="2"),
        key({"X": np.array([1, 2, 4], np.float32)}),
        key({"X": np.array([1, 2, 3], np.float64)}),  # same values, another dtype
        key({"X": np.array([[1, 2, 3]], np.float32)}),  # same bytes, another shape
        key(outputs=["Y"]),
        key(outputs=["Y", "Z"]),
        key(params={"temperature": 0.5}),
        key(params={"sleep": 0}),
    ]
    assert len({base, *others}) == len(others) + 1
    assert key(outputs=["Y", "Z"]) != key(outputs=["Z", "Y"])
    assert key(params={"temperature": 0.5}) != key(params={"temperature": 0.6})


def test_key_ignores_parameters_that_steer_the_server() -> None:
    steering = {"timeout": 5000, "priority": 1, "binary_data_output": True, "headers": {"a": 1}}
    assert key(params=steering) == key() == key(params={})
    assert key(params={**steering, "k": 1}) == key(params={"k": 1})


def test_key_reads_bytes_elements_one_by_one() -> None:
    def k(*items: object) -> bytes:
        return key({"S": bytes_array(*items)})

    assert k(b"ab", b"c") != k(b"a", b"bc")  # the same concatenation, other elements
    assert k(b"ab", b"c") == k(b"ab", b"c")
    assert k(b"1") != k("1")  # a str element is not the same as its bytes
    assert k(b"") != k(b"", b"")
    with pytest.raises(Uncacheable):
        k(b"a", 3)


def test_stateful_requests_and_unencodable_parameters_are_not_cacheable() -> None:
    for p in ("sequence_id", "sequence_start", "sequence_end"):
        with pytest.raises(Uncacheable, match=p):
            key(params={p: 1})
    with pytest.raises(Uncacheable):
        key(params={"x": object()})
    # JSON would write these as null, the same as None
    for bad in (float("nan"), float("inf"), [1.0, float("-inf")], {"a": np.float32("nan")}):
        with pytest.raises(Uncacheable, match="finite"):
            key(params={"x": bad})
    assert key(params={"x": None}) != key(params={"x": 0}) != key(params={"x": False})


# ---- the value -----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_encoding_round_trips_every_datatype(datatype: str) -> None:
    rng = np.random.default_rng(0)
    if datatype == "BYTES":
        arr = bytes_array(b"", b"abc", b"\x00\xff" * 10, "h\u00e9llo".encode(), b"x", b"yz")
    elif datatype == "BOOL":
        arr = rng.integers(0, 2, 6).astype(bool)
    elif datatype.startswith("FP"):
        arr = rng.standard_normal(6).astype(NUMPY_DTYPES[datatype])
        arr[0] = np.nan
    else:
        info = np.iinfo(NUMPY_DTYPES[datatype])
        arr = np.array([info.min, info.max, 0, 1, 2, 3], dtype=NUMPY_DTYPES[datatype])
    arr = arr.reshape(2, 3)
    out = decode_outputs(encode_outputs({"A": arr, "scalar": np.float32(7), "empty": arr[:0]}))
    assert list(out) == ["A", "scalar", "empty"]
    assert out["A"].dtype == NUMPY_DTYPES[datatype] and out["A"].shape == (2, 3)
    if datatype == "BYTES":
        assert out["A"].tolist() == arr.tolist()
    else:
        np.testing.assert_array_equal(out["A"], arr)
    assert out["scalar"].shape == () and out["scalar"] == 7
    assert out["empty"].shape == (0, 3) and out["empty"].dtype == NUMPY_DTYPES[datatype]


def test_encoding_is_little_endian_and_compact() -> None:
    big = np.array([1, 2], dtype=">i4")
    blob = encode_outputs({"A": big})
    assert blob.endswith(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    out = decode_outputs(blob)["A"]
    assert out.tolist() == [1, 2] and out.dtype == np.int32
    # header + 8 bytes of data: no pickle, no per-element overhead
    assert len(blob) < 60 and b"pickle" not in blob


def test_decoded_numbers_are_read_only_views_and_strings_become_bytes() -> None:
    out = decode_outputs(encode_outputs({"A": np.ones(4, np.float32), "S": np.array(["ab", "c"])}))
    assert not out["A"].flags.writeable
    assert out["S"].dtype == object and out["S"].tolist() == [b"ab", b"c"]


def test_outputs_without_a_v2_datatype_are_not_cacheable() -> None:
    with pytest.raises(Uncacheable):
        encode_outputs({"A": np.array([1j])})
    with pytest.raises(Uncacheable):
        encode_outputs({"A": bytes_array(b"a", 1.5)})


def test_malformed_entries_are_refused() -> None:
    good = encode_outputs({"A": np.arange(3, dtype=np.int64), "S": bytes_array(b"ab", b"c")})
    hlen = struct.unpack_from("<I", good, 4)[0]
    bad = [
        b"",
        b"XXXX" + good[4:],  # magic
        good[:-1],  # truncated
        good + b"\x00",  # trailing bytes
        good[:4] + struct.pack("<I", hlen + 1000) + good[8:],  # header length past the end
        good[:8] + b"{" * hlen + good[8 + hlen :],  # header not JSON
    ]
    for blob in bad:
        with pytest.raises(ValueError):
            decode_outputs(blob)
    header = b'[["S","BYTES",[3],11]]'  # three elements promised, two given
    body = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    with pytest.raises(ValueError, match="2 elements"):
        decode_outputs(b"IRC1" + struct.pack("<I", len(header)) + header + body)
    header = b'[["A","INT64",[3],16]]'  # 16 bytes cannot be three INT64
    with pytest.raises(ValueError, match="16 bytes"):
        decode_outputs(b"IRC1" + struct.pack("<I", len(header)) + header + b"\x00" * 16)


# ---- memory store --------------------------------------------------------------------------


async def test_memory_store_evicts_least_recently_used_by_bytes() -> None:
    store = MemoryStore(max_bytes=300)
    for k in (b"a", b"b", b"c"):
        await store.put(k, b"x" * 99, "m")  # 1 + 99 bytes each
    assert store.used == 300 and len(store) == 3
    assert await store.get(b"a") == b"x" * 99  # a is now the most recently used
    await store.put(b"d", b"y" * 99, "m")
    assert await store.get(b"b") is None  # b was the least recently used
    assert [await store.get(k) is not None for k in (b"a", b"c", b"d")] == [True, True, True]
    assert store.used == 300
    await store.put(b"e", b"z" * 250, "m")  # evicts as many as it takes
    assert len(store) == 1 and store.used == 251 and await store.get(b"e") is not None


async def test_memory_store_skips_oversized_entries_and_replaces_in_place() -> None:
    store = MemoryStore(max_bytes=100)
    await store.put(b"big", b"x" * 100, "m")
    assert len(store) == 0 and store.used == 0
    await store.put(b"k", b"x" * 10, "m")
    await store.put(b"k", b"y" * 20, "m")
    assert len(store) == 1 and store.used == 21 and await store.get(b"k") == b"y" * 20


async def test_memory_store_forgets_one_model() -> None:
    store = MemoryStore(max_bytes=1000)
    await store.put(b"1", b"a", "m")
    await store.put(b"2", b"b", "other")
    await store.forget("m")
    assert await store.get(b"1") is None and await store.get(b"2") == b"b"
    assert store.used == 2


def test_cache_is_off_when_the_memory_budget_is_zero() -> None:
    assert open_response_cache("memory", 0, 100, None, "p", None) is None
    cache = open_response_cache("memory", 1000, 10_000, None, "p", None)
    assert cache is not None and cache.max_entry_bytes == 1000
    with pytest.raises(ValueError, match="redis_url"):
        open_response_cache("redis", 1000, 100, None, "p", None)


async def test_lookup_then_store_then_hit_and_unreadable_entries_are_misses() -> None:
    cache = ResponseCache(MemoryStore(10_000), max_entry_bytes=1000)
    inputs = {"X": np.array([1, 2], np.float32)}
    miss = await cache.lookup("m", "1", inputs, SPECS, None, None)
    assert miss is not None and miss.outputs is None and miss.ns > 0
    await cache.store_outputs(miss, "m", {"Y": np.array([2, 4], np.float32)})
    hit = await cache.lookup("m", "1", inputs, SPECS, None, {"timeout": 10})
    assert hit is not None and hit.outputs is not None
    assert hit.outputs["Y"].tolist() == [2, 4]
    assert await cache.lookup("m", "1", inputs, SPECS, None, {"sequence_id": 1}) is None
    # too large for max_entry_bytes: not kept
    other = await cache.lookup("m", "1", {"X": np.array([3], np.float32)}, SPECS, None, None)
    assert other is not None
    await cache.store_outputs(other, "m", {"Y": np.zeros(1000, np.float32)})
    again = await cache.lookup("m", "1", {"X": np.array([3], np.float32)}, SPECS, None, None)
    assert again is not None and again.outputs is None
    # a corrupted entry reads as a miss
    assert isinstance(cache.store, MemoryStore)
    cache.store.put_now(hit.key, b"IRC1garbage", "m")
    broken = await cache.lookup("m", "1", inputs, SPECS, None, None)
    assert broken is not None and broken.outputs is None


# ---- the config field and the statistics ---------------------------------------------------


def test_config_field_forms_and_round_trip() -> None:
    assert parse_model_config("m", {}).response_cache is False
    assert parse_model_config("m", {"response_cache": {"enable": True}}).response_cache is True
    assert parse_model_config("m", {"response_cache": {"enable": False}}).response_cache is False
    assert parse_model_config("m", {"response_cache": True}).response_cache is True
    assert parse_model_config("m", {"response_cache": {}}).response_cache is False
    spec = parse_model_config("m", {"response_cache": {"enable": True}})
    assert parse_model_config("m", spec_to_config(spec)) == spec


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes", "'response_cache' must be a mapping"),
        ({"enable": "true"}, "'response_cache.enable' must be true or false"),
        ({"enable": True, "size": 1}, "unknown field(s) in 'response_cache': size"),
    ],
)
def test_bad_config_values_name_the_field(value: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_model_config("m", {"response_cache": value})
    assert message in e.value.message


def test_statistics_report_hits_and_misses() -> None:
    stats = VersionStats()
    stats.record_cache_miss(300)
    stats.record_success(1, 1000, 10, 20, 900, 30)
    stats.record_cache_hit(50, 40)
    stats.record_cache_hit(60, 45)
    d = stats.to_dict("m", "1")
    s = d["inference_stats"]
    assert s["cache_hit"] == {"count": 2, "ns": 85}
    assert s["cache_miss"] == {"count": 1, "ns": 300}
    assert s["success"] == {"count": 3, "ns": 1110}
    assert d["inference_count"] == 1 and s["compute_infer"]["count"] == 1


# ---- the engine ----------------------------------------------------------------------------


class Counting:
    """Doubles X (or multiplies by parameter `scale`); counts its calls and reports the count
    in output N; fails when parameter `fail` is set."""

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if parameters.get("fail"):
            raise ValueError("asked to fail")
        scale = float(parameters.get("scale", 2))
        return {"Y": inputs["X"] * scale, "N": np.array([self.calls], np.int64)}


IO = {
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
    "outputs": [
        {"name": "Y", "datatype": "FP32", "shape": [-1]},
        {"name": "N", "datatype": "INT64", "shape": [1]},
    ],
}


@pytest.fixture
async def engine() -> AsyncIterator[InferenceEngine]:
    cache = open_response_cache("memory", 1 << 20, 1 << 20, None, "p", None)
    e = InferenceEngine(ServingMetrics(CollectorRegistry()), drain_timeout_s=1,
                        response_cache=cache)  # fmt: skip
    yield e
    await e.stop()


async def add(engine: InferenceEngine, name: str, cached: bool) -> Counting:
    model = Counting()
    config: dict[str, Any] = {**IO, "response_cache": {"enable": cached}}
    spec = parse_model_config(name, config)
    await engine.add_model(spec, ObjectRuntime(spec, model))
    return model


def req(*values: float, **params: Any) -> InferenceRequest:
    return InferenceRequest(
        [Tensor("X", "FP32", np.array(values, np.float32))], parameters=params or None
    )


async def test_engine_answers_identical_requests_from_the_cache(engine: InferenceEngine) -> None:
    model = await add(engine, "cached", True)
    first = await engine.infer("cached", None, req(1, 2))
    second = await engine.infer("cached", None, req(1, 2, timeout=10_000_000))
    assert model.calls == 1
    assert [t.data.tolist() for t in second.outputs] == [[2, 4], [1]]
    assert [t.datatype for t in second.outputs] == [t.datatype for t in first.outputs]
    third = await engine.infer("cached", None, req(1, 2, scale=3))  # another parameter value
    await engine.infer("cached", None, req(1, 3))  # another input
    assert model.calls == 3 and third.outputs[0].data.tolist() == [3, 6]
    # requested outputs are part of the key, and classification applies to cached outputs
    only_y = InferenceRequest(req(1, 2).inputs, outputs=[RequestedOutput("Y")])
    assert [t.name for t in (await engine.infer("cached", None, only_y)).outputs] == ["Y"]
    assert model.calls == 4
    await engine.infer("cached", None, only_y)
    assert model.calls == 4

    stats = engine.stats("cached")[0]
    s = stats["inference_stats"]
    assert s["cache_hit"]["count"] == 2 and s["cache_hit"]["ns"] > 0
    assert s["cache_miss"]["count"] == 4 and s["cache_miss"]["ns"] > 0
    assert s["success"]["count"] == 6
    assert stats["execution_count"] == 4 and stats["inference_count"] == 4
    text = engine.metrics.render().decode()
    assert 'inferd_response_cache_hits_total{model="cached",version="1"} 2.0' in text
    assert 'inferd_response_cache_misses_total{model="cached",version="1"} 4.0' in text
    assert 'inferd_inference_success_total{model="cached",version="1"} 6.0' in text
    assert 'inferd_inference_executions_total{model="cached",version="1"} 4.0' in text


async def test_engine_never_caches_a_model_that_did_not_opt_in(engine: InferenceEngine) -> None:
    model = await add(engine, "plain", False)
    for _ in range(3):
        await engine.infer("plain", None, req(1, 2))
    assert model.calls == 3
    s = engine.stats("plain")[0]["inference_stats"]
    assert s["cache_hit"] == {"count": 0, "ns": 0} and s["cache_miss"] == {"count": 0, "ns": 0}


async def test_engine_reload_forgets_cached_answers_and_failures_are_not_cached(
    engine: InferenceEngine,
) -> None:
    model = await add(engine, "cached", True)
    with pytest.raises(InvalidInput):
        await engine.infer("cached", None, InferenceRequest([Tensor("X", "INT32", np.ones(1))]))
    for _ in range(2):
        with pytest.raises(ModelExecutionError):
            await engine.infer("cached", None, req(5, fail=True))
    assert model.calls == 2  # a failed execution left nothing to answer from
    model.calls = 0
    await engine.infer("cached", None, req(5))
    await engine.infer("cached", None, req(5))
    assert model.calls == 1
    assert engine.response_cache is not None
    await engine.unload("cached")
    assert isinstance(engine.response_cache.store, MemoryStore)
    assert len(engine.response_cache.store) == 0
