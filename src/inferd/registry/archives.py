"""Confined archive extraction for uploaded models (zip, tar, tar.gz/.bz2/.xz).

Archive handling is where zip-slip and bombs live (ONNX CVE-2024-5187, KServe #4612, pip
CVE-2025-8869). Rather than trusting `extractall` or a filter, every entry is checked by name
and type, only regular files and directories are written, sizes are counted from the bytes
actually produced (headers can lie), and every target is resolved and checked to be under
`dest`. Any failure removes everything written, leaving `dest` empty.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from inferd.core.errors import Unprocessable

_CHUNK = 1 << 20
#: Below this many bytes written, the ratio check stays quiet: tiny archives of text compress
#: well and can do no harm, while a bomb passes this mark within its first megabytes.
_RATIO_GRACE_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps for one extraction: entry count, bytes written, and uncompressed:compressed ratio."""

    max_entries: int = 10_000
    max_total_bytes: int = 10 * 2**30
    max_ratio: float = 200.0


@dataclass(frozen=True)
class _Entry:
    name: str  # as stored in the archive, for messages
    parts: tuple[str, ...]  # the checked relative path
    is_dir: bool
    compressed: int | None  # the entry's compressed size when the format tells it (zip)
    opener: Callable[[], IO[bytes]]


def _parts(raw: str) -> tuple[str, ...]:
    """The path segments of an entry name, or Unprocessable naming the entry."""
    shown = raw.encode("unicode_escape").decode("ascii")[:200]
    if "\x00" in raw:
        raise Unprocessable(f"archive entry '{shown}': NUL in the name")
    if "\\" in raw:
        raise Unprocessable(f"archive entry '{shown}': backslash in the name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":" and raw[0].isalpha()):
        raise Unprocessable(f"archive entry '{shown}': absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Unprocessable(f"archive entry '{shown}': '..' in the path")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise Unprocessable(f"archive entry '{shown}': a name is over 255 bytes")
    return tuple(parts)


def _shown(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")[:200]


# ---- readers: one entry at a time, type-checked -------------------------------------------------


def _zip_entries(zf: zipfile.ZipFile, limits: ArchiveLimits, size: int) -> Iterator[_Entry]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise Unprocessable(f"archive has over {limits.max_entries} entries")
    for info in infos:
        # orig_filename keeps what zipfile's own sanitising would cut at a NUL.
        raw = info.orig_filename
        # zipfile shifts entry offsets by where the central directory claims to be; a claim
        # that lies gives offsets before the file's start, and seek() fails with an OSError
        # that would read as a server fault.
        if not 0 <= info.header_offset < size:
            raise Unprocessable(f"damaged zip archive (entry '{_shown(raw)}' lies outside it)")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise Unprocessable(f"archive entry '{_shown(raw)}': symbolic links are not allowed")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise Unprocessable(f"archive entry '{_shown(raw)}': special files are not allowed")
        if info.flag_bits & 0x1:
            raise Unprocessable(f"archive entry '{_shown(raw)}': encrypted entries are not allowed")
        is_dir = raw.endswith("/") or kind == stat.S_IFDIR
        yield _Entry(
            raw,
            _parts(raw),
            is_dir,
            info.compress_size,
            lambda info=info: zf.open(info),  # type: ignore[misc]
        )


def _tar_entries(tf: tarfile.TarFile) -> Iterator[_Entry]:
    for member in tf:
        raw = member.name
        if member.issym():
            raise Unprocessable(f"archive entry '{_shown(raw)}': symbolic links are not allowed")
        if member.islnk():
            raise Unprocessable(f"archive entry '{_shown(raw)}': hard links are not allowed")
        if not (member.isreg() or member.isdir()):
            raise Unprocessable(f"archive entry '{_shown(raw)}': special files are not allowed")

        def opener(member: tarfile.TarInfo = member) -> IO[bytes]:
            stream = tf.extractfile(member)
            if stream is None:  # cannot happen for a regular file; refuse rather than guess
                raise Unprocessable(f"archive entry '{_shown(member.name)}' cannot be read")
            return stream

        yield _Entry(raw, _parts(raw), member.isdir(), None, opener)


# ---- the writer ------------------------------------------------------------------------------


class _Writer:
    """Writes checked entries under dest, counting bytes and entries as they stream."""

    def __init__(self, dest: Path, limits: ArchiveLimits, archive_size: int) -> None:
        self.dest = dest
        self.root = dest.resolve()
        self.limits = limits
        self.archive_size = max(archive_size, 1)
        self.total = 0
        self.entries = 0
        self.files: list[Path] = []
        self.file_names: set[tuple[str, ...]] = set()
        self.dir_names: set[tuple[str, ...]] = set()

    def target(self, entry: _Entry) -> Path:
        target = self.root.joinpath(*entry.parts)
        resolved = target.resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise Unprocessable(f"archive entry '{_shown(entry.name)}': escapes the destination")
        return target

    def make_dirs(self, entry: _Entry, path: Path) -> None:
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Unprocessable(
                f"archive entry '{_shown(entry.name)}': a path segment is also a file"
            ) from None
        # A directory created by this extraction can only be a real directory, but check the
        # resolved path again so nothing outside dest is ever written through.
        if not path.resolve().is_relative_to(self.root):
            raise Unprocessable(f"archive entry '{_shown(entry.name)}': escapes the destination")

    def add(self, entry: _Entry) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise Unprocessable(f"archive has over {self.limits.max_entries} entries")
        if not entry.parts:
            return  # "./" or "/"-only directory entries name dest itself
        if entry.parts in self.file_names or (entry.is_dir and entry.parts in self.dir_names):
            raise Unprocessable(f"archive entry '{_shown(entry.name)}': duplicate name")
        if entry.is_dir:
            self.dir_names.add(entry.parts)
            self.make_dirs(entry, self.target(entry))
            return
        if entry.parts in self.dir_names:
            raise Unprocessable(f"archive entry '{_shown(entry.name)}': duplicate name")
        self.file_names.add(entry.parts)
        target = self.target(entry)
        self.make_dirs(entry, target.parent)
        self.write(entry, target)

    def write(self, entry: _Entry, target: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, 0o644)
        except FileExistsError:
            raise Unprocessable(f"archive entry '{_shown(entry.name)}': duplicate name") from None
        except IsADirectoryError:
            raise Unprocessable(f"archive entry '{_shown(entry.name)}': duplicate name") from None
        self.files.append(target)
        written = 0
        with os.fdopen(fd, "wb") as out, entry.opener() as stream:
            while True:
                # Caps are checked before each write, so at most one chunk is ever read
                # past a cap and it is never written.
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                self.total += len(chunk)
                self.check_caps(entry, written)
                out.write(chunk)

    def check_caps(self, entry: _Entry, written: int) -> None:
        limits = self.limits
        if self.total > limits.max_total_bytes:
            raise Unprocessable(
                f"archive entry '{_shown(entry.name)}': the archive expands to over "
                f"{limits.max_total_bytes} bytes"
            )
        overall = max(limits.max_ratio * self.archive_size, _RATIO_GRACE_BYTES)
        per_entry = (
            max(limits.max_ratio * max(entry.compressed, 1), _RATIO_GRACE_BYTES)
            if entry.compressed is not None
            else None
        )
        if self.total > overall or (per_entry is not None and written > per_entry):
            raise Unprocessable(
                f"archive entry '{_shown(entry.name)}': compression ratio over "
                f"{limits.max_ratio:g}:1 (a decompression bomb?)"
            )


def _empty(dest: Path) -> None:
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()


def extract(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract a zip or tar (plain, gz, bz2, xz) into `dest`; return the files written.

    `dest` must be missing or an empty directory (so that cleaning up after a failure cannot
    remove anything the caller had). Refused with Unprocessable, naming the entry: absolute
    paths, `..`, backslashes, NUL, links, device/fifo files, duplicates, and more entries, bytes
    or compression ratio than `limits` allow. Blocking: call it from a worker thread.
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError("extract() needs an empty destination directory")
    writer = _Writer(dest, limits, archive.stat().st_size)
    try:
        with archive.open("rb") as f:
            magic = f.read(4)
        if magic in (b"PK\x03\x04", b"PK\x05\x06"):
            try:
                with zipfile.ZipFile(archive) as zf:
                    for entry in _zip_entries(zf, limits, writer.archive_size):
                        writer.add(entry)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
                raise Unprocessable(f"damaged zip archive ({_reason(e)})") from None
        else:
            try:
                with tarfile.open(archive, "r:*") as tf:
                    for entry in _tar_entries(tf):
                        writer.add(entry)
            except (tarfile.TarError, EOFError) as e:
                raise Unprocessable(f"not a readable zip or tar archive ({_reason(e)})") from None
    except BaseException as e:
        _empty(dest)
        if _bad_content(e):
            raise Unprocessable(f"archive could not be extracted ({_reason(e)})") from e
        raise
    return writer.files


def _bad_content(error: BaseException) -> bool:
    """Whether an error means the archive's bytes are bad (422) rather than the server (disk
    full, permissions), which must surface as what it is."""
    if isinstance(error, OSError):
        # bz2 and gzip report corrupt streams as OSError without an errno; real I/O has one.
        return error.errno is None
    return isinstance(
        error, (zlib.error, lzma.LZMAError, EOFError, RuntimeError, NotImplementedError, ValueError)
    )


def _reason(error: BaseException) -> str:
    # A short, path-free reason: the exception type and at most the start of its text.
    text = str(error).split("'/", 1)[0].strip()[:120]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["ArchiveLimits", "extract"]
