"""Frames between the server and a worker process: a JSON header, then raw tensor buffers.

Never pickle: the header is JSON (orjson) and tensors travel as their little-endian bytes
(BYTES as 4-byte length-prefixed elements, as on the V2 wire). Tensors of at least
`SHM_THRESHOLD` bytes go through a file in the worker's own folder under /dev/shm instead of the
socket (the server makes it, only that worker and the server may enter it): the writer creates
the file, the reader copies it out and removes it. Without such a folder, everything travels over
the socket.

Frame: u32 header length, u32 buffer count, u64 length per buffer, header, buffers.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import stat
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from inferd.core.datatypes import NUMPY_DTYPES, WIRE_DTYPES, datatype_of

_PREFIX = struct.Struct("<II")
_LEN = struct.Struct("<Q")
_U32 = struct.Struct("<I")
SHM_DIR = Path("/dev/shm")
SHM_THRESHOLD = 1 << 20
MAX_HEADER = 64 << 20

Buffer = bytes | memoryview


def encode_frame(header: dict[str, Any], buffers: Sequence[Buffer] = ()) -> list[Buffer]:
    """The pieces of one frame, ready for `writelines` / `sendmsg`."""
    head = orjson.dumps(header)
    prefix = _PREFIX.pack(len(head), len(buffers)) + b"".join(
        _LEN.pack(len(b) if isinstance(b, bytes) else b.nbytes) for b in buffers
    )
    return [prefix, head, *buffers]


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame (asyncio side). Raises IncompleteReadError on EOF."""
    head_len, count = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    if head_len > MAX_HEADER or count > 4096:
        raise ValueError("corrupt frame from worker")
    lengths = [_LEN.unpack(await reader.readexactly(8))[0] for _ in range(count)]
    header = orjson.loads(await reader.readexactly(head_len))
    buffers = [await reader.readexactly(n) for n in lengths]
    return header, buffers


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("server closed the connection")
    return data


def read_frame_sync(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame (worker side, blocking) from a buffered socket file: few syscalls."""
    head_len, count = _PREFIX.unpack(_read_exactly(stream, _PREFIX.size))
    if head_len > MAX_HEADER or count > 4096:
        raise ValueError("corrupt frame from server")
    lengths = _read_exactly(stream, 8 * count)
    sizes = [_LEN.unpack_from(lengths, 8 * i)[0] for i in range(count)]
    header = orjson.loads(_read_exactly(stream, head_len))
    return header, [_read_exactly(stream, n) for n in sizes]


def write_frame_sync(
    sock: socket.socket, header: dict[str, Any], buffers: Sequence[Buffer] = ()
) -> None:
    pieces = encode_frame(header, buffers)
    if sum(len(p) if isinstance(p, bytes) else p.nbytes for p in pieces) <= 1 << 16:
        sock.sendall(b"".join(pieces))  # one syscall for the common small reply
        return
    for piece in pieces:
        sock.sendall(piece)


def _array_bytes(datatype: str, arr: np.ndarray) -> Buffer:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in arr.ravel().tolist():
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    wire = np.ascontiguousarray(arr, dtype=WIRE_DTYPES[datatype])
    return memoryview(wire).cast("B")  # type: ignore[arg-type]


def _shm_write(folder: Path, data: Buffer) -> str:
    name = f"inferd-{os.getpid()}-{uuid.uuid4().hex}"
    path = folder / name
    # readable by others, inside a folder only the worker (its owner) and the server may enter:
    # the server may run as root and the worker as another user
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        size = len(data) if isinstance(data, bytes) else data.nbytes
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mm:
            mm[:] = data
    finally:
        os.close(fd)
    return name


def _shm_take(folder: Path | None, name: str, size: int) -> bytes:
    if folder is None or "/" in name or not name.startswith("inferd-"):
        raise ValueError("bad shared-memory name")
    path = folder / name
    # the other side wrote this folder and may be hostile model code: a symlink (to a file only
    # the server may read), a FIFO (a read that never ends) or a file shorter than announced (a
    # SIGBUS when the mapping is read) is refused
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size < size or size < 0:
            raise ValueError(f"bad shared-memory file {name}")
        if size == 0:
            return b""
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
            return mm[:size]
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def shm_available(folder: Path | None = SHM_DIR) -> bool:
    return folder is not None and folder.is_dir() and os.access(folder, os.W_OK)


def pack_tensors(
    arrays: dict[str, np.ndarray], shm: Path | None, buffers: list[Buffer]
) -> list[dict[str, Any]]:
    """Describe `arrays` in header entries; their bytes go to `buffers`, or to files in the
    folder `shm` (large tensors, when given)."""
    metas = []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        datatype = datatype_of(arr)
        data = _array_bytes(datatype, arr)
        size = len(data) if isinstance(data, bytes) else data.nbytes
        meta: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if shm is not None and size >= SHM_THRESHOLD:
            meta["shm"], meta["size"] = _shm_write(shm, data), size
        else:
            meta["buf"] = len(buffers)
            buffers.append(data)
        metas.append(meta)
    return metas


def unpack_tensors(
    metas: list[dict[str, Any]], buffers: list[bytes], shm: Path | None = None
) -> dict[str, np.ndarray]:
    """Rebuild arrays from header entries (removing any files they name in the folder `shm`)."""
    out: dict[str, np.ndarray] = {}
    for meta in metas:
        raw = _shm_take(shm, meta["shm"], meta["size"]) if "shm" in meta else buffers[meta["buf"]]
        datatype, shape = meta["datatype"], tuple(meta["shape"])
        if datatype == "BYTES":
            items: list[bytes] = []
            pos = 0
            while pos < len(raw):
                (n,) = _U32.unpack_from(raw, pos)
                items.append(raw[pos + 4 : pos + 4 + n])
                pos += 4 + n
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
            out[meta["name"]] = arr.reshape(shape)
        else:
            arr = np.frombuffer(raw, dtype=WIRE_DTYPES[datatype]).reshape(shape)
            out[meta["name"]] = arr.astype(NUMPY_DTYPES[datatype], copy=False)
    return out


def discard_shm(metas: list[dict[str, Any]], shm: Path | None) -> None:
    """Remove the shared-memory files of a frame that will never be read (the reader died)."""
    for meta in metas:
        name = meta.get("shm") if isinstance(meta, dict) else None
        if shm is not None and isinstance(name, str) and "/" not in name:
            (shm / name).unlink(missing_ok=True)
