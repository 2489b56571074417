"""Worker IPC frames: every datatype round-trips, through the socket buffers and /dev/shm."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from inferd.core.datatypes import NUMPY_DTYPES
from inferd.workers import protocol
from inferd.workers.protocol import (
    encode_frame,
    pack_tensors,
    read_frame,
    read_frame_sync,
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
def test_every_datatype_round_trips(use_shm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if use_shm:
        monkeypatch.setattr(protocol, "SHM_THRESHOLD", 1)
    arrays = {dt: sample(dt) for dt in NUMPY_DTYPES}
    buffers: list[protocol.Buffer] = []
    metas = pack_tensors(arrays, use_shm, buffers)
    assert (len(buffers) == 0) == use_shm
    raw = [bytes(b) for b in buffers]
    out = unpack_tensors(metas, raw)
    for dt, arr in arrays.items():
        assert out[dt].dtype == arr.dtype and out[dt].tolist() == arr.tolist()
    leftovers = [m["shm"] for m in metas if "shm" in m]
    assert all(not (protocol.SHM_DIR / name).exists() for name in leftovers)


async def test_frames_over_a_socket_pair() -> None:
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    big = np.arange(300_000, dtype=np.float32)
    buffers: list[protocol.Buffer] = []
    metas = pack_tensors({"x": big}, False, buffers)
    stream = b.makefile("rb")
    reading = asyncio.create_task(asyncio.to_thread(read_frame_sync, stream))
    writer.writelines(encode_frame({"op": "infer", "inputs": metas}, buffers))
    await writer.drain()
    header, got = await asyncio.wait_for(reading, 10)
    assert header["op"] == "infer"
    np.testing.assert_array_equal(unpack_tensors(header["inputs"], got)["x"], big)
    await asyncio.to_thread(write_frame_sync, b, {"ok": True}, [b"xyz"])
    assert await read_frame(reader) == ({"ok": True}, [b"xyz"])
    writer.close()
    b.close()


def test_shm_names_are_confined() -> None:
    with pytest.raises(ValueError):
        unpack_tensors([{"name": "x", "datatype": "FP32", "shape": [1],
                         "shm": "../etc/passwd", "size": 4}], [])  # fmt: skip
