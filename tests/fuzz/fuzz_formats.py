"""Fuzz target: artifact format detection (`detect_format`, `detect_dir_format`).

Input layout: one byte picks the mode. 0: the rest is one file's content. 1: the rest describes
a model directory: entries of (name index, kind, content), where a name comes from a fixed list
of names the detector looks for and a kind of 0 makes the entry a symbolic link to a pickle
outside the directory.

Invariants: detection returns a Format or raises Unprocessable (a 422), never anything else,
and never hangs; it does not change the file; a complete plain pickle is never called a
data-only format; symbolic links never change what a directory is detected as (detection does
not follow them).
"""

from __future__ import annotations

import pickle
import pickletools
import shutil
import tempfile
from pathlib import Path

from harness import Reader, instrument, run

# zipfile too: the zip-based formats are told apart by what its parser reads.
with instrument(__name__, "inferd", "zipfile"):
    from inferd.core.errors import Unprocessable
    from inferd.registry.formats import Format, detect_dir_format, detect_format

NAMES = [
    "model.onnx", "model.py", "config.json", "model.safetensors", "model-2.safetensors",
    "sub/model.bin", "model.json", "model.txt", "a/b/model.pkl", "model.zip", "model.ubj",
    "model.gguf",
]  # fmt: skip


def _is_plain_pickle(data: bytes) -> bool:
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # genops raises whatever a truncated or bad opcode stream gives
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


def _detect(path: Path) -> Format | None:
    try:
        fmt = detect_format(path)
    except Unprocessable:
        return None
    assert isinstance(fmt, Format), fmt
    return fmt


def _detect_dir(root: Path) -> str:
    try:
        return repr(detect_dir_format(root))
    except Unprocessable as e:
        return f"Unprocessable: {e.message}"


def _one_file(scratch: Path, data: bytes) -> None:
    path = scratch / "artifact"
    path.write_bytes(data)
    fmt = _detect(path)
    assert path.read_bytes() == data, "detection changed the file"
    if fmt is not None and _is_plain_pickle(data):
        assert fmt.executes_code or fmt.archive, f"a pickle detected as {fmt}"


def _directory(scratch: Path, r: Reader) -> None:
    outside = scratch / "outside.pkl"
    outside.write_bytes(pickle.dumps({"weights": [1.0]}, protocol=2))
    root = scratch / "model"
    root.mkdir()
    links = []
    while not r.done():
        path = root / NAMES[r.u8() % len(NAMES)]
        kind = r.u8() % 4
        content = r.blob(4096, width=2)
        if path.exists() or path.is_symlink():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == 0:
            path.symlink_to(outside)
            links.append(path)
        else:
            path.write_bytes(content)
    with_links = _detect_dir(root)
    for link in links:
        link.unlink()
    assert _detect_dir(root) == with_links, "a symbolic link changed the detected format"


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    mode = r.u8() % 2
    scratch = Path(tempfile.mkdtemp(prefix="inferd-fuzz-"))
    try:
        if mode == 0:
            _one_file(scratch, r.rest())
        else:
            _directory(scratch, r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    run(test_one_input)
