"""Confined extraction: each attack as a crafted zip and tar; nothing lands outside dest."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from inferd.core.errors import Unprocessable
from inferd.registry.archives import ArchiveLimits, extract

Member = tuple[str, bytes]  # (name, data); a name ending in "/" is a directory


def make_zip(path: Path, members: list[Member]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def tar_with(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info.size = len(data) if info.isreg() else 0
        tf.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out"


def assert_refused(archive: Path, dest: Path, match: str, **limits: int | float) -> None:
    with pytest.raises(Unprocessable, match=match):
        extract(archive, dest, ArchiveLimits(**limits))  # type: ignore[arg-type]
    assert dest.is_dir() and list(dest.iterdir()) == [], "dest must be left empty"
    outside = {p.name for p in dest.parent.iterdir()} - {dest.name, archive.name}
    assert not outside & {"evil.txt", "passwd", "escaped"}, "nothing written outside dest"


# ---- the normal case --------------------------------------------------------------------------

NORMAL: list[Member] = [
    ("model/", b""),
    ("model/config.json", b'{"a": 1}'),
    ("model/weights/part-0.bin", b"\x00\x01" * 1000),
    ("./model/weights/part-1.bin", b"abc"),
    ("README.md", b"# hi\n"),
]


@pytest.mark.parametrize("kind", ["zip", "w", "w:gz", "w:bz2", "w:xz"])
def test_normal_archive_with_nested_dirs(tmp_path: Path, dest: Path, kind: str) -> None:
    archive = (
        make_zip(tmp_path / "a.zip", NORMAL)
        if kind == "zip"
        else make_tar(tmp_path / "a.tar", NORMAL, kind)
    )
    files = extract(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in files) == [
        "README.md",
        "model/config.json",
        "model/weights/part-0.bin",
        "model/weights/part-1.bin",
    ]
    assert (dest / "model/weights/part-0.bin").read_bytes() == b"\x00\x01" * 1000
    assert (dest / "model/config.json").read_text() == '{"a": 1}'


def test_dest_must_be_empty(tmp_path: Path, dest: Path) -> None:
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ValueError):
        extract(make_zip(tmp_path / "a.zip", NORMAL), dest)
    assert (dest / "keep.txt").read_text() == "mine"


# ---- names ------------------------------------------------------------------------------------

BAD_NAMES = [
    ("../evil.txt", "'..'"),
    ("model/../../evil.txt", "'..'"),
    ("/etc/passwd", "absolute"),
    ("model\\..\\evil.txt", "backslash"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_bad_names_are_refused(tmp_path: Path, dest: Path, name: str, why: str, kind: str) -> None:
    members = [("model/ok.txt", b"fine"), (name, b"owned")]
    archive = (
        make_zip(tmp_path / "a.zip", members)
        if kind == "zip"
        else make_tar(tmp_path / "a.tgz", members)
    )
    assert_refused(archive, dest, why)
    assert not (tmp_path / "evil.txt").exists()


def test_nul_in_a_zip_name(tmp_path: Path, dest: Path) -> None:
    path = make_zip(tmp_path / "a.zip", [("ok.txt", b"1"), ("evilX.txt.onnx", b"2")])
    # zipfile cuts names at NUL when writing, so patch the stored name in both headers.
    path.write_bytes(path.read_bytes().replace(b"evilX.txt.onnx", b"evil\x00.txt.onnx"))
    assert_refused(path, dest, "NUL")


def test_nul_in_a_tar_pax_name(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("placeholder")
    info.pax_headers = {"path": "evil\x00.txt"}
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(path) as tf:
        assert "\x00" in tf.getmembers()[0].name, "the crafted name must survive tarfile"
    assert_refused(path, dest, "NUL")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_duplicate_names(tmp_path: Path, dest: Path, kind: str) -> None:
    members = [("model/a.bin", b"first"), ("model/./a.bin", b"second")]
    archive = (
        make_zip(tmp_path / "a.zip", members)
        if kind == "zip"
        else make_tar(tmp_path / "a.tgz", members)
    )
    assert_refused(archive, dest, "duplicate")


def test_file_and_directory_with_one_name(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "a.tgz", [("model", b"file"), ("model/x.bin", b"x")])
    assert_refused(archive, dest, "also a file")


# ---- entry types ------------------------------------------------------------------------------


def test_zip_symlink(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16) | 0x20
        zf.writestr(info, "/etc/passwd")
    assert_refused(path, dest, "symbolic link")


def test_zip_device_file(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("dev")
        info.external_attr = 0o020644 << 16  # S_IFCHR
        zf.writestr(info, b"")
    assert_refused(path, dest, "special file")


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "special file"),
        (tarfile.BLKTYPE, "special file"),
        (tarfile.FIFOTYPE, "special file"),
    ],
)
def test_tar_links_and_devices(tmp_path: Path, dest: Path, kind: bytes, why: str) -> None:
    info = tarfile.TarInfo("model/escaped")
    info.type = kind
    info.linkname = "/etc/passwd"
    assert_refused(tar_with(tmp_path / "a.tar", info), dest, why)
    assert not (dest / "model" / "escaped").is_symlink()


# ---- resource caps ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_too_many_entries(tmp_path: Path, dest: Path, kind: str) -> None:
    members = [(f"f{i}.txt", b"x") for i in range(60)]
    archive = (
        make_zip(tmp_path / "a.zip", members)
        if kind == "zip"
        else make_tar(tmp_path / "a.tgz", members)
    )
    assert_refused(archive, dest, "over 50 entries", max_entries=50)
    extract(archive, tmp_path / "ok", ArchiveLimits(max_entries=60))  # exactly at the cap


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_too_many_bytes(tmp_path: Path, dest: Path, kind: str) -> None:
    import os

    members = [("a.bin", os.urandom(40_000)), ("b.bin", os.urandom(40_000))]
    archive = (
        make_zip(tmp_path / "a.zip", members)
        if kind == "zip"
        else make_tar(tmp_path / "a.tgz", members)
    )
    assert_refused(archive, dest, "over 50000 bytes", max_total_bytes=50_000)


def test_zip_with_a_lying_size_header(tmp_path: Path, dest: Path) -> None:
    # The central directory and local header claim 1 byte; 100 kB of data follow.
    path = make_zip(tmp_path / "a.zip", [("a.bin", b"\x00" * 100_000)])
    raw = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("a.bin")
    lying = (100_000).to_bytes(4, "little")
    assert raw.count(lying) == 2
    path.write_bytes(bytes(raw).replace(lying, (1).to_bytes(4, "little")))
    with pytest.raises(Unprocessable):
        extract(path, dest, ArchiveLimits(max_total_bytes=50_000))
    assert list(dest.iterdir()) == []
    assert info.file_size == 100_000


BOMB = 32 * 2**20  # 32 MiB of zeros: ~1000:1 with deflate


@pytest.mark.parametrize(
    "build",
    [
        lambda p: make_zip(p / "bomb.zip", [("ok.txt", b"ok"), ("zeros.bin", b"\x00" * BOMB)]),
        lambda p: make_tar(p / "bomb.tgz", [("ok.txt", b"ok"), ("zeros.bin", b"\x00" * BOMB)]),
        lambda p: make_tar(p / "bomb.txz", [("zeros.bin", b"\x00" * BOMB)], "w:xz"),
    ],
    ids=["zip", "tar.gz", "tar.xz"],
)
def test_compression_bomb(tmp_path: Path, dest: Path, build: Callable[[Path], Path]) -> None:
    archive = build(tmp_path)
    assert archive.stat().st_size * 500 < BOMB, "the fixture must really be a bomb"
    assert_refused(archive, dest, "compression ratio")


def test_well_compressed_small_archive_is_fine(tmp_path: Path, dest: Path) -> None:
    # 500 kB of zeros is ~1000:1 but under the grace size: harmless, extracted.
    archive = make_zip(tmp_path / "a.zip", [("zeros.bin", b"\x00" * 500_000)])
    assert [p.name for p in extract(archive, dest)] == ["zeros.bin"]


def test_not_an_archive(tmp_path: Path, dest: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"definitely not an archive" * 100)
    assert_refused(tmp_path / "x.tar", dest, "not a readable")


def test_corrupt_gzip_stream(tmp_path: Path, dest: Path) -> None:
    good = make_tar(tmp_path / "a.tgz", [("a.bin", bytes(range(256)) * 400)]).read_bytes()
    bad = good[:30] + bytes(b ^ 0xFF for b in good[30:200]) + good[200:]
    (tmp_path / "bad.tgz").write_bytes(bad)
    with pytest.raises(Unprocessable):
        extract(tmp_path / "bad.tgz", dest)
    assert list(dest.iterdir()) == []


def test_zip_whose_directory_lies_about_its_offset(tmp_path: Path, dest: Path) -> None:
    # Found by tests/fuzz (archives): zipfile shifts every entry by the directory's claimed
    # offset, so a claim 100 bytes too far puts the first entry before the file's start and
    # seek() raised OSError(EINVAL) — read as a server fault instead of a damaged upload.
    raw = bytearray(make_zip(tmp_path / "a.zip", NORMAL).read_bytes())
    end = raw.rindex(b"PK\x05\x06")
    offset = int.from_bytes(raw[end + 16 : end + 20], "little")
    raw[end + 16 : end + 20] = (offset + 100).to_bytes(4, "little")
    (tmp_path / "a.zip").write_bytes(bytes(raw))
    assert_refused(tmp_path / "a.zip", dest, "damaged zip archive .*'model/'.* outside it")
