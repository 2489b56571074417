"""Fuzz target: the confined archive extractor (`inferd.registry.archives.extract`).

Input layout: one byte picks the mode. 0: the rest is the archive file as is. 1: the rest
describes a tar (compression, format, then entries: type, name, link target, mode, data) that
`tarfile` writes. 2: the rest describes a zip (entries: name, external attributes, flag bits,
compression, data) that `zipfile` writes. Built archives reach the entry checks; raw bytes
reach the container parsers.

Invariants: extraction returns or raises Unprocessable (a 422 naming the entry), never anything
else; nothing is written outside the destination (it sits three levels deep in a scratch
directory that is checked whole afterwards); no link, device or fifo is ever created; after a
failure the destination is empty; after a success the files returned are exactly the regular
files under it. A hang is a bug too (libFuzzer -timeout).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

from harness import Reader, instrument, run

# The container parsers are instrumented too: their branches are what raw inputs explore.
with instrument(__name__, "inferd", "tarfile", "zipfile"):
    import tarfile
    import zipfile

    from inferd.core.errors import Unprocessable
    from inferd.registry.archives import ArchiveLimits, extract

LIMITS = ArchiveLimits(max_entries=64, max_total_bytes=4 << 20, max_ratio=200.0)
TAR_TYPES = [
    tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
    tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE,
    b"x", b"g", b"L", b"K", b"Z",
]  # fmt: skip
TAR_FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
TAR_MODES = ["w", "w:gz", "w:bz2", "w:xz"]
ZIP_COMPRESSION = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _tar(r: Reader) -> bytes:
    buf = io.BytesIO()
    mode = TAR_MODES[r.u8() % len(TAR_MODES)]
    with tarfile.open(fileobj=buf, mode=mode, format=TAR_FORMATS[r.u8() % 3]) as tf:  # type: ignore[call-overload]
        while not r.done():
            info = tarfile.TarInfo(_name(r.blob(48)))
            info.type = TAR_TYPES[r.u8() % len(TAR_TYPES)]
            info.linkname = _name(r.blob(24))
            info.mode = r.uint(2)
            data = r.blob(64)
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _zip(r: Reader) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are among the inputs wanted
        while not r.done():
            info = zipfile.ZipInfo(_name(r.blob(48)))
            info.external_attr = r.uint(4)
            info.flag_bits = r.u8() & 0x09  # encrypted, data descriptor
            info.compress_type = ZIP_COMPRESSION[r.u8() % len(ZIP_COMPRESSION)]
            zf.writestr(info, r.blob(64))
    return buf.getvalue()


def _archive(data: bytes) -> bytes | None:
    r = Reader(data)
    mode = r.u8() % 3
    if mode == 0:
        return r.rest()
    try:
        return _tar(r) if mode == 1 else _zip(r)
    except (ValueError, OSError, UnicodeError, tarfile.TarError, OverflowError):
        return None  # the writer refused: not an archive the extractor can ever see


def _tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def _check(scratch: Path, dest: Path, files: list[Path] | None) -> None:
    outside = _tree(scratch) - {f"a/b/dest/{p}" for p in _tree(dest)}
    assert outside == {"archive", "a", "a/b", "a/b/dest"}, f"written outside dest: {outside}"
    regular = set()
    for p in _tree(dest):
        st = os.lstat(dest / p)
        assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), f"{p}: {oct(st.st_mode)}"
        if stat.S_ISREG(st.st_mode):
            regular.add(p)
    if files is None:
        assert not regular and not _tree(dest), f"left behind after a failure: {_tree(dest)}"
    else:
        returned = {os.path.relpath(f, dest.resolve()) for f in files}
        assert returned == regular, (returned, regular)


def test_one_input(data: bytes) -> None:
    archive = _archive(data)
    if archive is None:
        return
    scratch = Path(tempfile.mkdtemp(prefix="inferd-fuzz-"))
    try:
        (scratch / "archive").write_bytes(archive)
        dest = scratch / "a" / "b" / "dest"
        dest.mkdir(parents=True)
        try:
            files: list[Path] | None = extract(scratch / "archive", dest, LIMITS)
        except Unprocessable:
            files = None
        _check(scratch, dest, files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    run(test_one_input)
