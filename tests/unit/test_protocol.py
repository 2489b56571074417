"""Worker IPC frames: typed and multiplexed by id; every datatype round-trips, through the socket
buffers and through files in a shared-memory folder; hostile files there are refused; errors,
generation requests and events keep their meaning across the wire."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from inferd.core.datatypes import NUMPY_DTYPES
from inferd.core.errors import InvalidInput, ModelExecutionError, ModelLoadError
from inferd.core.generate import GenerateRequest, SamplingParams, TokenEvent
from inferd.workers import protocol
from inferd.workers.protocol import (
    BadFrame,
    Frame,
    FrameParser,
    Kind,
    encode_frame,
    error_body,
    error_of,
    event_body,
    event_of,
    pack_tensors,
    read_frame_sync,
    request_body,
    request_of,
    unpack_tensors,
    write_frame_sync,
)


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        arr = np.empty(4, dtype=object)
        arr[:] = [b"a", b"", b"\x00\xff", b"text"]
        return arr.reshape(2, 2)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    return np.arange(4).astype(NUMPY_DTYPES[datatype]).reshape(2, 2)


@pytest.mark.parametrize("use_shm", [False, True])
def test_every_datatype_round_trips(
    use_shm: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shm = tmp_path if use_shm else None
    if use_shm:
        monkeypatch.setattr(protocol, "SHM_THRESHOLD", 1)
    arrays = {dt: sample(dt) for dt in NUMPY_DTYPES}
    buffers: list[protocol.Buffer] = []
    metas = pack_tensors(arrays, shm, buffers)
    assert (len(buffers) == 0) == use_shm
    raw = [bytes(b) for b in buffers]
    out = unpack_tensors(metas, raw, shm)
    for dt, arr in arrays.items():
        assert out[dt].dtype == arr.dtype and out[dt].tolist() == arr.tolist()
    assert list(tmp_path.iterdir()) == []  # every file was taken


async def test_frames_over_a_socket_pair() -> None:
    a, b = socket.socketpair()
    _, writer = await asyncio.open_unix_connection(sock=a)
    big = np.arange(300_000, dtype=np.float32)
    buffers: list[protocol.Buffer] = []
    metas = pack_tensors({"x": big}, None, buffers)
    stream = b.makefile("rb")
    reading = asyncio.create_task(asyncio.to_thread(read_frame_sync, stream))
    writer.writelines(encode_frame(Kind.INFER, "7", {"inputs": metas}, buffers))
    await writer.drain()
    frame = await asyncio.wait_for(reading, 10)
    assert (frame.kind, frame.id) == (Kind.INFER, "7")
    np.testing.assert_array_equal(unpack_tensors(frame.body["inputs"], frame.buffers)["x"], big)
    writer.close()
    b.close()
    c, d = socket.socketpair()  # the worker's replies: small ones in one piece, large in several
    with c, d, d.makefile("rb") as replies:
        for payload in (b"xyz", bytes(200_000)):
            sent = asyncio.create_task(
                asyncio.to_thread(write_frame_sync, c, Kind.RESULT, "7", {"ok": 1}, [payload])
            )
            got = await asyncio.to_thread(read_frame_sync, replies)
            await sent
            assert got == Frame(Kind.RESULT, "7", {"ok": 1}, [payload])


def wire(kind: Kind, rid: str, body: dict[str, object], buffers: list[bytes]) -> bytes:
    return b"".join(bytes(p) for p in encode_frame(kind, rid, body, buffers))


def test_the_parser_takes_frames_in_any_pieces() -> None:
    """Frames split at every byte, several in one piece, and a large one arriving in chunks:
    each comes out whole, in order, once its last byte is in."""
    frames = [Frame(Kind.RESULT, "7", {"ok": 1}, [b"xyz", b""]), Frame(Kind.PONG, "8", {}, []),
              Frame(Kind.EVENT, "9", {"t": "é"}, [bytes(range(256)) * 4000])]  # fmt: skip
    data = b"".join(wire(f.kind, f.id, f.body, f.buffers) for f in frames)
    for step in (1, 7, 4096, len(data)):
        parser, out = FrameParser(), []
        for i in range(0, len(data), step):
            out += parser.feed(data[i : i + step])
        assert out == frames and parser.error is None
        assert parser.feed(b"") == []


def test_the_worker_refuses_bad_headers_with_their_id_and_stays_in_step() -> None:
    """Worker side: a frame of an unknown kind is refused naming its id (the worker answers that
    id with an error); a header that is not a frame at all is refused too; the next frame is
    read whole."""
    data = b""
    for header in (b'{"kind": "exec", "id": "3", "body": {}}', b"[1]", b'{"kind": "ping"}'):
        data += struct.pack("<IIQ", len(header), 1, 2) + header + b"zz"
    stream = io.BytesIO(data + wire(Kind.PONG, "4", {"pid": 1}, []))
    with pytest.raises(BadFrame) as err:
        read_frame_sync(stream)
    assert err.value.id == "3" and "exec" in str(err.value)
    for _ in range(2):
        with pytest.raises(BadFrame) as err:
            read_frame_sync(stream)
        assert err.value.id == ""
    assert read_frame_sync(stream) == Frame(Kind.PONG, "4", {"pid": 1})


def test_a_frame_that_is_not_one_ends_the_parsing() -> None:
    """A frame of an unknown kind names its id; what came before it is still delivered; nothing
    is read after it (the server cuts such a worker's connection)."""
    good = wire(Kind.PONG, "4", {"pid": 1}, [])
    for header, rid in ((b'{"kind": "exec", "id": "3", "body": {}}', "3"), (b"[1]", ""),
                        (b'{"kind": "ping"}', ""), (b"{not json", "")):  # fmt: skip
        parser = FrameParser()
        bad = struct.pack("<IIQ", len(header), 1, 2) + header + b"zz"
        assert parser.feed(good + bad + good) == [Frame(Kind.PONG, "4", {"pid": 1})]
        assert isinstance(parser.error, BadFrame) and parser.error.id == rid
        assert parser.feed(good) == []
    parser = FrameParser()
    assert parser.feed(struct.pack("<II", 1 << 30, 0)) == []  # a header too large to be one
    assert parser.error is not None


def test_errors_keep_their_kind_and_the_worker_cannot_claim_not_found() -> None:
    assert isinstance(error_of(error_body(InvalidInput("bad x"))), InvalidInput)
    raised = error_of(error_body(ZeroDivisionError("division by zero"), prefix="model raised "))
    assert isinstance(raised, ModelExecutionError)
    assert raised.message == "model raised ZeroDivisionError: division by zero"
    loading = error_of(error_body(OSError("no file"), "ModelLoadError"))
    assert isinstance(loading, ModelLoadError) and loading.message == "OSError: no file"
    forged = error_of({"error": "ModelNotFound", "message": "m"})
    assert type(forged) is ModelExecutionError
    assert type(error_of({"error": "object", "message": "m"})) is ModelExecutionError


def test_generation_requests_and_events_round_trip() -> None:
    params = SamplingParams(max_tokens=5, temperature=0.0, stop=("a", "b"), stop_token_ids=(2,))
    req = GenerateRequest("client-id", prompt="hi", params=params)
    wire = orjson.loads(orjson.dumps(request_body(req)))
    assert request_of("9", wire) == GenerateRequest("9", "hi", None, params)
    ev = TokenEvent("9", (1, 2), "xy", 3, 2, True, "stop", "a", None)
    body = orjson.loads(orjson.dumps(event_body(ev, {"running": 1})))
    assert body["stats"] == {"running": 1}
    assert event_of("client-id", body) == TokenEvent("client-id", (1, 2), "xy", 3, 2, True,
                                                     "stop", "a", None)  # fmt: skip


def test_shm_names_are_confined(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        unpack_tensors([{"name": "x", "datatype": "FP32", "shape": [1],
                         "shm": "../etc/passwd", "size": 4}], [], tmp_path)  # fmt: skip
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"x")
    protocol.discard_shm([{"shm": f"../{outside.name}"}], tmp_path)
    assert outside.exists()


def test_hostile_shm_files_are_refused(tmp_path: Path) -> None:
    """The worker writes its folder: what it leaves there cannot make the server read a file
    only the server may read, wait forever on a FIFO, or crash on a short mapping."""
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_bytes(b"\0" * 64)
    (tmp_path / "inferd-link").symlink_to(secret)
    os.mkfifo(tmp_path / "inferd-fifo")
    (tmp_path / "inferd-short").write_bytes(b"\0" * 4)
    os.link(secret, tmp_path / "inferd-hardlink")
    for name in ("inferd-link", "inferd-fifo", "inferd-short", "inferd-hardlink"):
        meta = {"name": "x", "datatype": "FP32", "shape": [16], "shm": name, "size": 64}
        with pytest.raises((ValueError, OSError)):
            unpack_tensors([meta], [], tmp_path)
