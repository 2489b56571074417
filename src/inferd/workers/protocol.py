"""Frames between the server and a worker process: one typed, multiplexed protocol for every
kind of replica (V2 infer and LLM generation alike).

A frame is a JSON header — its kind (`Kind`), the id of the request it belongs to, a body — then
raw buffers. Ids are chosen by the server, one per call or generation, so many requests may be
in flight on one connection; a worker answers each on the same id (`REPLIES` end a call;
`PROGRESS` and `EVENT` frames come before its end).

Never pickle: the header is JSON (orjson) and tensors travel as their little-endian bytes
(BYTES as 4-byte length-prefixed elements, as on the V2 wire). Tensors of at least
`SHM_THRESHOLD` bytes go through a file in the worker's own folder under /dev/shm instead of the
socket (the server makes it, only that worker and the server may enter it): the writer creates
the file, the reader copies it out and removes it. Without such a folder, everything travels over
the socket.

Frame: u32 header length, u32 buffer count, u64 length per buffer, header, buffers.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import socket
import stat
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from inferd.core import errors
from inferd.core.datatypes import NUMPY_DTYPES, WIRE_DTYPES, datatype_of
from inferd.core.errors import InferdError
from inferd.core.generate import GenerateRequest, SamplingParams, TokenEvent

_PREFIX = struct.Struct("<II")
_LEN = struct.Struct("<Q")
_U32 = struct.Struct("<I")
SHM_DIR = Path("/dev/shm")
SHM_THRESHOLD = 1 << 20
MAX_HEADER = 64 << 20
MAX_BUFFERS = 4096

Buffer = bytes | memoryview


class Kind(StrEnum):
    """What a frame is. Server to worker: LOAD, INFER, GENERATE, ABORT, CHAT_PROMPT, PING,
    UNLOAD. Worker to server: LOADED, RESULT, PROGRESS, EVENT, PROMPT, PONG, UNLOADED, ERROR."""

    LOAD = "load"  # body: name, config, version, path, runtime ("llm": a generation engine)
    LOADED = "loaded"  # body: platform, notes; inputs/outputs, or max_model_len
    INFER = "infer"  # body: inputs (tensor entries), outputs, parameters
    RESULT = "result"  # body: outputs (tensor entries), compute_ns
    PROGRESS = "progress"  # body: done, total (a long infer reports as it goes)
    GENERATE = "generate"  # body: prompt, prompt_token_ids, params; the id names the request
    EVENT = "event"  # body: one TokenEvent and the engine's stats
    ABORT = "abort"  # the id of a generation to drop (no reply: its last event says "abort")
    CHAT_PROMPT = "chat_prompt"  # body: messages
    PROMPT = "prompt"  # body: text
    PING = "ping"
    PONG = "pong"  # body: pid, stats (a generation engine's counters)
    UNLOAD = "unload"
    UNLOADED = "unloaded"
    ERROR = "error"  # body: error (an InferdError class name), message


#: The kinds that end a call: the last frame a worker sends on a call's id.
REPLIES = frozenset({Kind.LOADED, Kind.RESULT, Kind.PROMPT, Kind.PONG, Kind.UNLOADED, Kind.ERROR})


@dataclass(slots=True)
class Frame:
    kind: Kind
    id: str
    body: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)


class BadFrame(ValueError):
    """A frame whose header cannot be understood; `id` is its request id, when it has one."""

    def __init__(self, message: str, rid: str = "") -> None:
        super().__init__(message)
        self.id = rid


def encode_frame(
    kind: Kind, rid: str, body: Mapping[str, Any] | None = None, buffers: Sequence[Buffer] = ()
) -> list[Buffer]:
    """The pieces of one frame, ready for `writelines` / `sendmsg`."""
    head = orjson.dumps({"kind": kind, "id": rid, "body": body or {}})
    prefix = _PREFIX.pack(len(head), len(buffers)) + b"".join(
        _LEN.pack(len(b) if isinstance(b, bytes) else b.nbytes) for b in buffers
    )
    return [prefix, head, *buffers]


def _frame(raw: bytes | bytearray, buffers: list[bytes]) -> Frame:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadFrame(f"unreadable frame header: {e}") from None
    if not isinstance(header, dict):
        raise BadFrame("frame header is not an object")
    rid, body = header.get("id"), header.get("body")
    if not isinstance(rid, str) or not isinstance(body, dict):
        raise BadFrame("frame header without an id or a body")
    try:
        kind = Kind(str(header.get("kind")))
    except ValueError:
        raise BadFrame(f"unknown frame kind {header.get('kind')!r}", rid) from None
    return Frame(kind, rid, body, buffers)


def _check_prefix(head_len: int, count: int) -> None:
    if head_len > MAX_HEADER or count > MAX_BUFFERS:
        raise ValueError("corrupt frame")


class FrameParser:
    """Frames out of a byte stream as it arrives (asyncio side: fed from `data_received`, so a
    reply is routed where its last byte lands, with no reader task in between)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Why the stream stopped being read: a frame that is not one. Nothing is parsed after.
        self.error: ValueError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """The frames `data` completes, in order. A frame that is not one sets `error` (the
        frames before it are still returned) and ends the parsing."""
        if self.error is not None:
            return []
        src: bytes | bytearray = data
        if self._buf:
            self._buf += data
            src = self._buf
        frames: list[Frame] = []
        pos, n = 0, len(src)
        try:
            while n - pos >= _PREFIX.size:
                head_len, count = _PREFIX.unpack_from(src, pos)
                _check_prefix(head_len, count)
                at = pos + _PREFIX.size + 8 * count
                if n < at:
                    break
                sizes = struct.unpack_from(f"<{count}Q", src, pos + _PREFIX.size)
                end = at + head_len + sum(sizes)
                if n < end:
                    break
                raw = src[at : at + head_len]
                at += head_len
                buffers = []
                for size in sizes:
                    buffers.append(bytes(src[at : at + size]))
                    at += size
                pos = end
                frames.append(_frame(raw, buffers))
        except ValueError as e:
            self.error = e
            self._buf = bytearray()
            return frames
        if src is self._buf:
            del self._buf[:pos]
        elif pos < n:
            self._buf = bytearray(src[pos:])
        return frames


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("server closed the connection")
    return data


def read_frame_sync(stream: BinaryIO) -> Frame:
    """Read one frame (worker side, blocking) from a buffered socket file: few syscalls."""
    head_len, count = _PREFIX.unpack(_read_exactly(stream, _PREFIX.size))
    _check_prefix(head_len, count)
    lengths = _read_exactly(stream, 8 * count)
    sizes = [_LEN.unpack_from(lengths, 8 * i)[0] for i in range(count)]
    raw = _read_exactly(stream, head_len)
    return _frame(raw, [_read_exactly(stream, n) for n in sizes])


def write_frame_sync(
    sock: socket.socket,
    kind: Kind,
    rid: str,
    body: Mapping[str, Any] | None = None,
    buffers: Sequence[Buffer] = (),
) -> None:
    pieces = encode_frame(kind, rid, body, buffers)
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


# ---- errors --------------------------------------------------------------------------------


def error_body(
    e: BaseException, fallback: str = "ModelExecutionError", prefix: str = ""
) -> dict[str, Any]:
    """The ERROR body for `e`: an InferdError keeps its class; anything else (the model's own
    exception) becomes `fallback` with its type and message."""
    if isinstance(e, InferdError):
        return {"error": type(e).__name__, "message": e.message}
    return {"error": fallback, "message": f"{prefix}{type(e).__name__}: {e}"}


#: Errors a worker may report by name; anything else becomes ModelExecutionError.
_ERRORS: dict[str, type[InferdError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, InferdError) and cls is not errors.ModelNotFound
}


def error_of(body: Mapping[str, Any]) -> InferdError:
    """The server's error for an ERROR body (the worker cannot claim a model is not found)."""
    cls = _ERRORS.get(str(body.get("error")), errors.ModelExecutionError)
    return cls(str(body.get("message", "worker error")))


# ---- generation ----------------------------------------------------------------------------


def request_body(r: GenerateRequest) -> dict[str, Any]:
    """A GENERATE body (the frame's id names the request on the connection)."""
    return {"prompt": r.prompt, "prompt_token_ids": r.prompt_token_ids,
            "params": dataclasses.asdict(r.params)}  # fmt: skip


def request_of(rid: str, body: Mapping[str, Any]) -> GenerateRequest:
    p = dict(body.get("params") or {})
    for key in ("stop", "stop_token_ids"):
        p[key] = tuple(p.get(key) or ())
    return GenerateRequest(rid, body.get("prompt"), body.get("prompt_token_ids"),
                           SamplingParams(**p))  # fmt: skip


_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(TokenEvent) if f.name != "request_id")


def event_body(ev: TokenEvent, stats: Mapping[str, Any]) -> dict[str, Any]:
    body = {name: getattr(ev, name) for name in _EVENT_FIELDS}
    body["stats"] = stats
    return body


def event_of(request_id: str, body: Mapping[str, Any]) -> TokenEvent:
    """The event of an EVENT body, named by the caller's own request id."""
    fields = {name: body[name] for name in _EVENT_FIELDS}
    fields["token_ids"] = tuple(fields["token_ids"])
    return TokenEvent(request_id=request_id, **fields)
