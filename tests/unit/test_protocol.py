"""Worker IPC frames: every datatype round-trips, through the socket buffers and through files in
a shared-memory folder; hostile files there are refused."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

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
    reader, writer = await asyncio.open_unix_connection(sock=a)
    big = np.arange(300_000, dtype=np.float32)
    buffers: list[protocol.Buffer] = []
    metas = pack_tensors({"x": big}, None, buffers)
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
