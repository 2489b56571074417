"""Write the seed corpora: small valid and near-valid inputs for each fuzz target.

    .venv/bin/python tests/fuzz/make_corpus.py

Seeds are `tests/fuzz/corpus/<target>/seed-*`, deterministic (rerunning rewrites the same
bytes) and a few kB per target. Regression inputs (crashes found by fuzzing, named
`regress-*`) sit beside them and are never touched here. The input layouts are described in
each `fuzz_<target>.py`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import hpack
import orjson

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def v2_json() -> Iterable[tuple[str, bytes]]:
    def req(*inputs: dict[str, object], **top: object) -> bytes:
        return orjson.dumps({"inputs": list(inputs), **top})

    yield "fp32-flat", req({"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]})
    yield (
        "fp32-nested",
        req({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3.5, -4]]}),
    )
    yield "bytes", req({"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "\u00e9"]})
    yield "bool", req({"name": "b", "datatype": "BOOL", "shape": [3], "data": [True, False, True]})
    yield (
        "uint64-big",
        req({"name": "u", "datatype": "UINT64", "shape": [2], "data": [2**64 - 1, 0]}),
    )
    yield "int8-range", req({"name": "i", "datatype": "INT8", "shape": [2], "data": [127, -128]})
    yield "fp16-scalar", req({"name": "h", "datatype": "FP16", "shape": [], "data": 1.5})
    yield (
        "everything",
        req(
            {
                "name": "a",
                "datatype": "INT32",
                "shape": [1, 2],
                "data": [1, 2],
                "parameters": {"p": 1},
            },
            {"name": "b", "datatype": "FP64", "shape": [0, 3], "data": []},
            id="r1",
            parameters={"binary_data_output": True, "priority": 2},
            outputs=[{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}],
        ),
    )
    # Near-valid: each breaks one rule.
    yield "bad-count", req({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]})
    yield "ragged", req({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1], [2, 3]]})
    yield "too-deep", req({"name": "x", "datatype": "INT64", "shape": [1], "data": [[[1]]]})
    yield "fp32-overflow", req({"name": "x", "datatype": "FP32", "shape": [1], "data": [1e39]})
    yield "negative-dim", req({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]})
    yield (
        "zero-dim-huge",
        req({"name": "x", "datatype": "FP32", "shape": [0, 2**62, 2**62], "data": []}),
    )
    yield "rank-65", req({"name": "x", "datatype": "BOOL", "shape": [1] * 65, "data": [True]})
    yield "not-object", b'[{"inputs": 1}]'
    yield "truncated", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1'


def v2_binary() -> Iterable[tuple[str, bytes]]:
    def binary(
        model: int, doc: dict[str, object], blob: bytes, header: bytes | None = None
    ) -> bytes:
        head = orjson.dumps(doc)
        value = str(len(head)).encode() if header is None else header
        return bytes([model]) + value + b"\n" + head + blob

    def tensor(name: str, dt: str, shape: list[int], size: int) -> dict[str, object]:
        params = {"binary_data_size": size}
        return {"name": name, "datatype": dt, "shape": shape, "parameters": params}

    fp32 = struct.pack("<4f", 1, 2, 3, 4)
    strings = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    yield "fp32", binary(0, {"inputs": [tensor("x", "FP32", [1, 4], 16)]}, fp32)
    yield "bytes", binary(0, {"inputs": [tensor("s", "BYTES", [2], len(strings))]}, strings)
    yield (
        "mixed",
        binary(
            0,
            {
                "inputs": [
                    tensor("x", "FP16", [2], 4),
                    {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]},
                    tensor("b", "BOOL", [3], 3),
                ],
                "parameters": {"binary_data_output": True},
            },
            struct.pack("<2e", 0.5, -2) + b"\x01\x00\x01",
        ),
    )
    yield "raw-fp32", bytes([0]) + b"0\n" + fp32 * 2
    yield "raw-bytes", bytes([1]) + b"0\n" + struct.pack("<I", 3) + b"abc"
    yield "raw-scalar", bytes([4]) + b"0\n" + struct.pack("<q", -5)
    yield "raw-two-inputs", bytes([7]) + b"0\n" + fp32
    yield (
        "json-only",
        bytes([0])
        + orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}),
    )
    # Near-valid.
    yield "header-too-long", binary(0, {"inputs": [tensor("x", "FP32", [1], 4)]}, b"", b"99999")
    yield "header-not-number", binary(0, {"inputs": [tensor("x", "FP32", [1], 4)]}, b"abcd", b"1e3")
    yield "header-superscript", bytes([0]) + b"\xb2\n" + b"{}"
    yield "size-past-end", binary(0, {"inputs": [tensor("x", "FP32", [1], 8)]}, b"abcd")
    yield "unclaimed", binary(0, {"inputs": [tensor("x", "FP32", [1], 4)]}, b"abcdabcd")
    yield (
        "bytes-truncated",
        binary(0, {"inputs": [tensor("s", "BYTES", [1], 6)]}, struct.pack("<I", 9) + b"ab"),
    )
    yield "zero-dim-huge", binary(0, {"inputs": [tensor("x", "INT8", [0, 2**62, 64], 0)]}, b"")


def grpc_codec() -> Iterable[tuple[str, bytes]]:
    from tritonclient.grpc import service_pb2 as pb

    def message(**kw: object) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(model_name="m", **kw)

    m = message(id="r1")
    x = m.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    x.contents.fp32_contents.extend([1.5, -2])
    s = m.inputs.add(name="s", datatype="BYTES", shape=[2])
    s.contents.bytes_contents.extend([b"ab", b""])
    u = m.inputs.add(name="u", datatype="UINT16", shape=[1])
    u.contents.uint_contents.append(65535)
    m.outputs.add(name="y").parameters["binary_data"].bool_param = True
    m.parameters["priority"].int64_param = 1
    m.parameters["tag"].string_param = "t"
    m.parameters["big"].uint64_param = 2**64 - 1
    m.parameters["f"].double_param = 0.5
    yield "typed", m.SerializeToString(deterministic=True)

    m = message()
    m.inputs.add(name="h", datatype="FP16", shape=[2])
    m.inputs.add(name="s", datatype="BYTES", shape=[1])
    m.inputs.add(name="b", datatype="BOOL", shape=[3])
    m.raw_input_contents.extend(
        [struct.pack("<2e", 1, 2), struct.pack("<I", 1) + b"z", b"\x01\x00\x01"]
    )
    yield "raw", m.SerializeToString(deterministic=True)

    for dt, field, values in [
        ("INT8", "int_contents", [-128, 127]),
        ("UINT64", "uint64_contents", [2**64 - 1, 0]),
        ("INT64", "int64_contents", [-(2**63), 1]),
        ("FP64", "fp64_contents", [1e308, -0.0]),
        ("BOOL", "bool_contents", [True, False]),
    ]:
        m = message()
        getattr(m.inputs.add(name="t", datatype=dt, shape=[2]).contents, field).extend(values)
        yield f"typed-{dt.lower()}", m.SerializeToString(deterministic=True)
    # Near-valid.
    m = message()
    m.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    yield "int8-out-of-range", m.SerializeToString(deterministic=True)
    m = message()
    m.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.append(1)
    m.raw_input_contents.append(b"\0" * 8)
    yield "typed-and-raw", m.SerializeToString(deterministic=True)
    m = message()
    m.inputs.add(name="x", datatype="FP32", shape=[0, 2**62, 2**62])
    m.raw_input_contents.append(b"")
    yield "zero-dim-huge", m.SerializeToString(deterministic=True)
    m = message()
    m.inputs.add(name="x", datatype="INT32", shape=[1] * 65).contents.int_contents.append(1)
    yield "rank-65", m.SerializeToString(deterministic=True)
    m = message()
    m.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1)
    yield "fp16-typed", m.SerializeToString(deterministic=True)


def http2() -> Iterable[tuple[str, bytes]]:
    from inferd.api.grpc import frames as H
    from inferd.api.grpc.health import HealthCheckRequest

    def block(path: str, encoder: hpack.Encoder | None = None, **extra: str) -> bytes:
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *((k.replace("_", "-"), v) for k, v in extra.items()),
        ]
        return bytes((encoder or hpack.Encoder()).encode(fields))

    def msg(payload: bytes, flag: int = 0) -> bytes:
        return struct.pack(">BL", flag, len(payload)) + payload

    settings = H.frame(H.SETTINGS, 0, 0, H.SETTING.pack(H.INITIAL_WINDOW_SIZE, 65_535))
    hello = msg(HealthCheckRequest(service="abc").SerializeToString())
    unary = H.frame(H.HEADERS, H.END_HEADERS, 1, block("/t.S/Unary")) + H.frame(
        H.DATA, H.END_STREAM, 1, hello
    )
    yield "unary", b"\0" + settings + unary
    yield "unary-split", b"\x05" + settings + unary
    enc = hpack.Encoder()
    two = b"".join(
        H.frame(H.HEADERS, H.END_HEADERS, sid, block("/t.S/Unary", enc, x_key=str(sid)))
        + H.frame(H.DATA, H.END_STREAM, sid, hello)
        for sid in (1, 3, 5)
    )
    yield "dynamic-table", b"\0" + settings + two
    b = block("/t.S/Unary", x_key="k" * 100)
    yield (
        "continuation",
        b"\0"
        + settings
        + H.frame(H.HEADERS, H.PRIORITY_FLAG, 1, b"\0\0\0\0\x10" + b[:7])
        + H.frame(H.CONTINUATION, 0, 1, b[7:50])
        + H.frame(H.CONTINUATION, H.END_HEADERS, 1, b[50:])
        + H.frame(H.DATA, H.END_STREAM | H.PADDED, 1, b"\x02" + hello + b"\0\0"),
    )
    yield (
        "big-flow-control",
        b"\0"
        + settings
        + H.frame(H.HEADERS, H.END_HEADERS, 1, block("/t.S/Big"))
        + H.frame(H.DATA, H.END_STREAM, 1, msg(b"0123456789"))
        + H.frame(H.WINDOW_UPDATE, 0, 0, H.U32.pack(100_000))
        + H.frame(H.WINDOW_UPDATE, 0, 1, H.U32.pack(100_000))
        + H.frame(H.SETTINGS, 0, 0, H.SETTING.pack(H.MAX_FRAME_SIZE, 32_768)),
    )
    yield (
        "echo-stream",
        b"\0"
        + settings
        + H.frame(H.HEADERS, H.END_HEADERS, 1, block("/t.S/Echo", grpc_timeout="5S"))
        + H.frame(H.DATA, 0, 1, hello + hello[:3])
        + H.frame(H.DATA, 0, 1, hello[3:])
        + H.frame(H.RST_STREAM, 0, 1, H.U32.pack(H.CANCEL)),
    )
    yield (
        "gzip",
        b"\0"
        + settings
        + H.frame(H.HEADERS, H.END_HEADERS, 1, block("/t.S/Unary", grpc_encoding="gzip"))
        + H.frame(
            H.DATA,
            H.END_STREAM,
            1,
            msg(gzip.compress(HealthCheckRequest(service="z").SerializeToString(), mtime=0), 1),
        ),
    )
    yield (
        "ping-goaway",
        b"\0"
        + settings
        + H.frame(H.PING, 0, 0, b"12345678")
        + H.frame(H.GOAWAY, 0, 0, H.GOAWAY_BODY.pack(0, 0))
        + unary,
    )
    yield (
        "table-resize",
        b"\0"
        + settings
        + H.frame(H.HEADERS, H.END_HEADERS, 1, b"\x20\x3f\xe1\x1f" + block("/t.S/Unary"))
        + H.frame(H.DATA, H.END_STREAM, 1, hello),
    )
    yield (
        "not-grpc",
        b"\0"
        + H.frame(
            H.HEADERS,
            H.END_HEADERS | H.END_STREAM,
            1,
            bytes(hpack.Encoder().encode([(":method", "GET"), (":path", "/")])),
        ),
    )
    yield (
        "trailers-metadata",
        b"\0"
        + settings
        + H.frame(
            H.HEADERS, H.END_HEADERS, 1, block("/t.S/Unary", blob_bin="AAEC", grpc_timeout="1n")
        )
        + H.frame(H.DATA, 0, 1, hello)
        + H.frame(
            H.HEADERS,
            H.END_HEADERS | H.END_STREAM,
            1,
            bytes(hpack.Encoder().encode([("x-trailer", "1")])),
        ),
    )


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _tar(entries: list[tuple[str, bytes]], gzipped: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gzipped else raw  # mtime 0: the same bytes each run


def archives() -> Iterable[tuple[str, bytes]]:
    files = [("m/", b""), ("m/model.onnx", b"\x08\x07" * 8), ("m/config.json", b"{}")]
    yield "raw-zip", b"\0" + _zip(files)
    yield "raw-tar", b"\0" + _tar(files).rstrip(b"\0")  # trailing zero blocks trimmed: smaller
    yield "raw-tgz", b"\0" + _tar(files, gzipped=True)
    yield "raw-zip-slip", b"\0" + _zip([("../evil", b"x")])

    def entry(
        name: bytes, kind: int, link: bytes = b"", mode: int = 0o644, data: bytes = b""
    ) -> bytes:
        return (
            bytes([len(name)])
            + name
            + bytes([kind, len(link)])
            + link
            + mode.to_bytes(2, "big")
            + bytes([len(data)])
            + data
        )

    yield "tar-build", b"\x01\x00\x00" + entry(b"d/", 2) + entry(b"d/f.txt", 0, data=b"hello")
    yield (
        "tar-build-gnu-gz",
        b"\x01\x01\x01" + entry(b"a/b/c", 0, data=b"x" * 20) + entry(b"a/b/c", 0),
    )
    yield (
        "tar-build-symlink",
        b"\x01\x00\x02" + entry(b"link", 3, b"../../outside") + entry(b"link/f", 0, data=b"x"),
    )
    yield "tar-build-hardlink", b"\x01\x00\x00" + entry(b"f", 0, data=b"x") + entry(b"g", 4, b"f")
    yield "tar-build-fifo", b"\x01\x00\x00" + entry(b"fifo", 7)

    def zentry(
        name: bytes, attr: int = 0o100644 << 16, flags: int = 0, comp: int = 1, data: bytes = b""
    ) -> bytes:
        return (
            bytes([len(name)])
            + name
            + attr.to_bytes(4, "big")
            + bytes([flags, comp, len(data)])
            + data
        )

    yield (
        "zip-build",
        b"\x02" + zentry(b"d/", 0o40755 << 16) + zentry(b"d/model.onnx", data=b"abc" * 10),
    )
    yield "zip-build-symlink", b"\x02" + zentry(b"l", 0o120777 << 16, data=b"/etc/passwd")
    yield (
        "zip-build-dup",
        b"\x02" + zentry(b"a", comp=2, data=b"1") + zentry(b"./a", comp=3, data=b"2"),
    )
    yield "zip-build-abs", b"\x02" + zentry(b"/abs", comp=0) + zentry(b"C:x")


def formats() -> Iterable[tuple[str, bytes]]:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx_bytes = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)]
    ).SerializeToString()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/passwd")
    graph.initializer.append(weight)
    external = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    safetensors = struct.pack("<Q", len(header)) + header + b"\0" * 8
    pickled = pickle.dumps({"w": [1.0, 2.0]}, protocol=2)
    one = {
        "onnx": onnx_bytes,
        "safetensors": safetensors,
        "pickle": pickled,
        "pickle-proto0": pickle.dumps([1], protocol=0),
        "joblib-gz": gzip.compress(pickled, mtime=0),
        "pickle-bz2": bz2.compress(pickled),
        "gguf": b"GGUF" + struct.pack("<I", 3) + b"\0" * 16,
        "hdf5": b"\x89HDF\r\n\x1a\n" + b"\0" * 8,
        "xgboost-json": b'{"learner": {"attributes": {}}, "version": [2, 0, 0]}',
        "xgboost-ubj": b"{i\x07learner{}}",
        "lightgbm": b"tree\nversion=v4\nnum_class=1\n",
        "tar": _tar([("model.onnx", onnx_bytes)])[:1024],  # the header and data blocks
        "skops-zip": _zip([("schema.json", b"{}")]),
        "torch-zip": _zip([("m/data.pkl", pickled), ("m/version", b"3")]),
        "torchscript-zip": _zip([("m/constants.pkl", pickled), ("m/code/m.py", b"")]),
        "onnx-external-data": external.SerializeToString(),
        "safetensors-overlap": safetensors.replace(b"[0, 8]", b"[0, 9]"),
    }
    for name, data in one.items():
        yield f"file-{name}", b"\0" + data

    def entries(*items: tuple[int, int, bytes]) -> bytes:
        return b"\x01" + b"".join(
            bytes([n, k]) + len(c).to_bytes(2, "big") + c for n, k, c in items
        )

    yield "dir-transformers", entries((2, 1, b'{"model_type": "bert"}'), (3, 1, safetensors))
    yield "dir-python", entries((1, 1, b"class Model: pass\n"), (0, 1, onnx_bytes))
    yield "dir-two-models", entries((0, 1, onnx_bytes), (8, 1, pickled))
    yield "dir-symlink", entries((0, 0, b""), (3, 1, safetensors), (2, 0, b""))


TARGETS = {
    "v2_json": v2_json,
    "v2_binary": v2_binary,
    "grpc_codec": grpc_codec,
    "http2": http2,
    "archives": archives,
    "formats": formats,
}


def main() -> None:
    for target, make in TARGETS.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        total = 0
        for name, data in make():
            (folder / f"seed-{name}").write_bytes(data)
            total += len(data)
        print(f"{target}: {len(list(folder.glob('seed-*')))} seeds, {total} bytes")


if __name__ == "__main__":
    main()
