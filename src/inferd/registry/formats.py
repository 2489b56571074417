"""Artifact format detection from content (magic bytes and structure), never from the name.

Pickle scanners lose to parser disagreements (nullifAI, the Picklescan GHSAs), so inferd does
not scan pickles: it decides what a file *is* from its leading bytes and a strict structural
check, and anything that can run code on load is flagged `executes_code`. Detection itself never
unpickles, imports a model or runs a framework loader; the only parser it calls is protobuf
(ONNX), which builds messages and runs no code.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.core.errors import Unprocessable


@dataclass(frozen=True)
class Format:
    """What an artifact is: a format name, the runtime that serves it (None when inferd has no
    runtime for it yet), whether loading it can run code, and whether it is an archive to
    extract before detecting again."""

    name: str
    runtime: str | None
    executes_code: bool
    archive: bool = False


ONNX = Format("onnx", "onnx", False)
SKOPS = Format("skops", "sklearn", False)
TORCH_EXPORT = Format("torch_export", "torch", False)
TORCHSCRIPT = Format("torchscript", "torch", False)
TORCH_PICKLE = Format("torch_pickle", "torch", True)
PICKLE = Format("pickle", "sklearn", True)
JOBLIB = Format("joblib", "sklearn", True)
XGBOOST = Format("xgboost", "xgboost", False)
LIGHTGBM = Format("lightgbm", "lightgbm", False)
SAFETENSORS = Format("safetensors", None, False)
GGUF = Format("gguf", None, False)
# Keras HDF5 files can hold Lambda layers: marshalled Python bytecode.
HDF5 = Format("hdf5", None, True)
TRANSFORMERS = Format("transformers", "transformers", False)
PYTHON = Format("python", "python", True)
ZIP = Format("zip", None, False, archive=True)
TAR = Format("tar", None, False, archive=True)
#: Names of the formats whose loading can run code (what a version's `artifact_format` records).
CODE_FORMATS = frozenset(
    f.name for f in (TORCH_PICKLE, PICKLE, JOBLIB, HDF5, PYTHON) if f.executes_code
)

_HEAD = 4096
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_MAX_SAFETENSORS_HEADER = 100 * 2**20
#: A bz2 block is up to 900 kB compressed; read at most this much input to see a few kB out.
_MAX_INFLATE_INPUT = 2 * 2**20
_MAX_DIR_FILES = 10_000
_SUPPORTED = (
    "onnx, skops, torch, pickle/joblib, xgboost, lightgbm, safetensors, gguf, hdf5, zip, tar"
)

_PICKLE_GLOBAL = re.compile(rb"^c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")
_PICKLE_OLD = (b"(dp0\n", b"(lp0\n", b"(i", b"}q\x00", b"]q\x00", b"(c")
_XGB_JSON = re.compile(rb'^\{\s*"learner"\s*:\s*\{')
_LGB_VERSION = re.compile(rb"^version=v\d", re.M)
_ST_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def detect_format(path: Path) -> Format:
    """The format of the file at `path`, from its content; Unprocessable when unrecognised."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_HEAD)
    except OSError:
        raise Unprocessable(
            f"unrecognised artifact format: '{path.name}' is not readable"
        ) from None
    if not head:
        raise Unprocessable(f"unrecognised artifact format: '{path.name}' is empty")

    # Leading magic bytes are exclusive (a file has one first byte), so their order is free.
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_format(path)
    if head.startswith(b"GGUF") and 1 <= int.from_bytes(head[4:8], "little") <= 1000:
        return GGUF
    if head.startswith(_HDF5_MAGIC):
        return HDF5
    if _is_pickle(head):
        return JOBLIB if b"joblib.numpy_pickle" in head else PICKLE
    try:
        inflated = _inflate_head(path, head)
    except _Lz4Unavailable:
        # Nothing can look inside without the lz4 package; joblib is the lz4 producer inferd
        # knows, and calling it code-executing is the side that fails safe.
        return JOBLIB
    if inflated is not None and _is_pickle(inflated):
        return JOBLIB
    if inflated is not None and _is_tar(inflated):
        return TAR
    if _is_tar(head):
        return TAR
    if _is_safetensors(path, head, size):
        return SAFETENSORS
    if _is_xgboost_json(head) or _is_xgboost_ubj(head):
        return XGBOOST
    if head.startswith((b"tree\n", b"tree\r\n")) and _LGB_VERSION.search(head[:1024]):
        return LIGHTGBM
    if _is_onnx(path, head):
        return ONNX
    raise Unprocessable(
        f"unrecognised artifact format in '{path.name}' (inferd reads: {_SUPPORTED})"
    )


# ---- pickle and compressed pickle --------------------------------------------------------------


def _is_pickle(head: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True  # PROTO opcode, protocols 2-5
    # Protocols 0/1 have no header; these are the openings CPython's pickler writes for
    # objects, lists and dicts. Text that happens to match is called pickle: the safe side.
    return bool(_PICKLE_GLOBAL.match(head)) or head.startswith(_PICKLE_OLD)


class _Lz4Unavailable(Exception):
    """lz4-framed content, and no lz4 package to look inside it."""


class _UnsafeContent(Unprocessable):
    """A recognised format with dangerous content: reported, never skipped over."""


def _decompressor(head: bytes) -> Callable[[bytes, int], bytes] | None:
    """A bounded decompress(data, max_out) for the compression `head` starts with, if any."""
    if head.startswith(b"\x1f\x8b"):
        gz = zlib.decompressobj(wbits=31)
        return lambda data, n: gz.decompress(data, n)
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        zl = zlib.decompressobj()
        return lambda data, n: zl.decompress(data, n)
    if head.startswith(b"BZh"):
        bz = bz2.BZ2Decompressor()
        return lambda data, n: bz.decompress(data, n)
    if head.startswith(b"\xfd7zXZ\x00") or head.startswith(b"]\x00\x00"):
        xz = lzma.LZMADecompressor(format=lzma.FORMAT_AUTO)
        return lambda data, n: xz.decompress(data, n)
    if head.startswith(_LZ4_MAGIC):
        try:
            import lz4.frame  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise _Lz4Unavailable from None
        l4 = lz4.frame.LZ4FrameDecompressor()
        return lambda data, n: bytes(l4.decompress(data, n))
    return None


def _inflate_head(path: Path, head: bytes) -> bytes | None:
    """The first few kB of the decompressed content, never more (a bomb inflates no further)."""
    decompress = _decompressor(head)
    if decompress is None:
        return None
    out = b""
    read = 0
    try:
        with path.open("rb") as f:
            while len(out) < 1024 and read < _MAX_INFLATE_INPUT:
                chunk = f.read(64 * 1024)
                if not chunk:
                    break
                read += len(chunk)
                out += decompress(chunk, _HEAD - len(out))
    except Exception:  # zlib.error, LZMAError, OSError, lz4's RuntimeError: not compressed
        return out or None
    return out or None


def _is_tar(block: bytes) -> bool:
    """A valid tar header: the checksum over the 512-byte block must match (v7, ustar, gnu)."""
    if len(block) < 512 or block[0] == 0:
        return False
    field = block[148:156].split(b"\x00", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:512])
    return stored == unsigned


# ---- data-only formats ---------------------------------------------------------------------------


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    if size < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= min(_MAX_SAFETENSORS_HEADER, size - 8) or head[8:9] != b"{":
        return False
    try:
        with path.open("rb") as f:
            f.seek(8)
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return _valid_safetensors_header(header, size - 8 - n)


def _valid_safetensors_header(header: Any, body: int) -> bool:
    """Offsets must tile the body exactly, as the safetensors library itself requires."""
    if not isinstance(header, dict):
        return False
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                return False
            continue
        if not isinstance(info, dict):
            return False
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or not isinstance(shape, list):
            return False
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            return False
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= body
        ):
            return False
        width = _ST_DTYPE_BYTES.get(dtype)
        if width is not None:
            count = 1
            for d in shape:
                count *= d
            if count * width != offsets[1] - offsets[0]:
                return False
        spans.append((offsets[0], offsets[1]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            return False
        end = stop
    return end == body


def _is_xgboost_json(head: bytes) -> bool:
    return bool(_XGB_JSON.match(head.lstrip()))


def _is_xgboost_ubj(head: bytes) -> bool:
    # UBJSON object: '{', then the key as <int marker><length><bytes> (no 'S' marker for keys).
    widths = {ord("i"): 1, ord("U"): 1, ord("I"): 2, ord("l"): 4, ord("L"): 8}
    if len(head) < 3 or head[0:1] != b"{" or head[1] not in widths:
        return False
    width = widths[head[1]]
    length = int.from_bytes(head[2 : 2 + width], "big")
    start = 2 + width
    return length == 7 and head[start : start + 7] == b"learner"


def _read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _is_onnx(path: Path, head: bytes) -> bool:
    # Cheap gate before a full parse: ModelProto serialises field 1 (ir_version, a varint)
    # first, and every released IR version is small.
    if head[:1] != b"\x08":
        return False
    varint = _read_varint(head, 1)
    if varint is None or not 1 <= varint[0] <= 100:
        return False
    try:
        import onnx
    except ImportError:
        raise Unprocessable(
            f"'{path.name}' looks like ONNX, but the onnx package is not installed to check it"
        ) from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # DecodeError, ValueError...: whatever it is, it is not ONNX
        return False
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        return False
    bad = _unsafe_external_location(model.graph)
    if bad:
        # CVE-2022-25882: external-data locations that walk out of the model's directory.
        raise _UnsafeContent(f"'{path.name}': ONNX external data location '{bad[:100]}' is unsafe")
    return True


def _unsafe_external_location(graph: Any) -> str | None:
    tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for sub in subgraphs:
                bad = _unsafe_external_location(sub)
                if bad:
                    return bad
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            location = entry.value
            if not isinstance(location, str):
                # Not UTF-8: protobuf hands back the raw bytes; no safe path looks like that.
                return repr(location)
            parts = location.replace("\\", "/").split("/")
            if (
                not location
                or "\x00" in location
                or location.startswith(("/", "\\"))
                or re.match(r"^[A-Za-z]:", location)
                or ".." in parts
            ):
                return str(location)
    return None


# ---- zip-based formats -------------------------------------------------------------------------


def _zip_format(path: Path) -> Format:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    # NotImplementedError: a central directory that claims a zip version zipfile lacks.
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise Unprocessable(
            f"unrecognised artifact format: '{path.name}' is a damaged zip"
        ) from None
    listed = set(names)
    if "schema.json" in listed:
        return SKOPS
    roots: set[str] = set()
    for name in names:
        root, sep, rest = name.partition("/")
        if name == "archive_format" or (sep and rest == "archive_format"):
            return TORCH_EXPORT
        if sep:
            roots.add(root)
    # torch.jit.save: <root>/code/... and <root>/constants.pkl (its data.pkl is read by the
    # TorchScript unpickler, which builds tensors and script objects only).
    for root in sorted(roots):
        if f"{root}/constants.pkl" in listed and any(n.startswith(f"{root}/code/") for n in names):
            return TORCHSCRIPT
    # torch.save: <root>/data.pkl is a full pickle.
    if any(f"{root}/data.pkl" in listed for root in roots) or "data.pkl" in listed:
        return TORCH_PICKLE
    return ZIP


# ---- directories -------------------------------------------------------------------------------


def _dir_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            files.append(path)
            if len(files) > _MAX_DIR_FILES:
                raise Unprocessable(f"the model directory holds over {_MAX_DIR_FILES} files")
    return files


def _is_json_object(path: Path, limit: int = 16 * 2**20) -> bool:
    try:
        if path.stat().st_size > limit:
            return False
        return isinstance(json.loads(path.read_bytes()), dict)
    except (OSError, ValueError, RecursionError):
        return False


def detect_dir_format(root: Path) -> Format:
    """The format of an extracted model directory.

    A `model.py` makes it a Python model (code, checked first so that code is never missed);
    `config.json` plus safetensors weights is a transformers checkpoint; otherwise exactly one
    recognised model file decides. Anything else is Unprocessable, naming what was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise Unprocessable("the model directory does not exist")
    files = _dir_files(root)
    top = {p.name: p for p in files if p.parent == root}
    if "model.py" in top:
        return PYTHON
    if "config.json" in top and _is_json_object(top["config.json"]):
        weights = [p for name, p in top.items() if name.endswith(".safetensors")]
        if weights and all(_safe_detect(p) == SAFETENSORS for p in weights):
            return TRANSFORMERS
    found: list[tuple[str, Format]] = []
    for path in files:
        fmt = _safe_detect(path)
        if fmt is not None and not fmt.archive:
            found.append((path.relative_to(root).as_posix(), fmt))
    if len(found) == 1:
        return found[0][1]
    if not found:
        names = ", ".join(sorted(p.relative_to(root).as_posix() for p in files)[:10]) or "nothing"
        raise Unprocessable(f"no recognised model file in the directory (found: {names})")
    listing = ", ".join(f"{name} ({fmt.name})" for name, fmt in found[:10])
    raise Unprocessable(
        f"{len(found)} model files in the directory, expected exactly one: {listing}"
    )


def _safe_detect(path: Path) -> Format | None:
    try:
        return detect_format(path)
    except _UnsafeContent:
        raise
    except Unprocessable:
        return None


__all__ = ["Format", "detect_dir_format", "detect_format"]
