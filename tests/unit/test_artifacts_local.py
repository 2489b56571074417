"""The local artifact store: round trips, atomic writes, keys that try to leave the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inferd.core.errors import InvalidInput, NotFound
from inferd.registry.artifacts import (
    LocalArtifactStore,
    S3ArtifactStore,
    artifact_key,
    check_key,
    open_store,
    version_prefix,
)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "model.onnx": os.urandom(3000),
        "config/model.yaml": b"runtime: onnx\n",
        "weights/a/b/c.bin": b"\x00" * 10,
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


async def test_round_trip_with_nested_dirs(tmp_path: Path) -> None:
    source, store_root, out = tmp_path / "src", tmp_path / "store", tmp_path / "out"
    source.mkdir()
    files = make_tree(source)
    store = LocalArtifactStore(store_root)
    prefix = version_prefix("m1", 3)
    keys = await store.put_tree(prefix, source)
    assert sorted(keys) == sorted(f"models/m1/3/{rel}" for rel in files)
    assert await store.exists("models/m1/3/weights/a/b/c.bin")
    assert not await store.exists("models/m1/3/nope.bin")
    assert await store.size_of_prefix(prefix) == sum(len(d) for d in files.values())

    assert await store.fetch_tree(prefix, out) == out
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    assert not [p for p in store_root.rglob("*") if p.name.startswith(".tmp-")]

    assert await store.delete_prefix(prefix) == len(files)
    assert await store.size_of_prefix(prefix) == 0
    assert not await store.exists("models/m1/3/model.onnx")
    with pytest.raises(NotFound):
        await store.fetch_tree(prefix, tmp_path / "again")


async def test_prefix_is_a_directory_not_a_string_prefix(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    (tmp_path / "f").write_bytes(b"1234")
    await store.put_file("models/m/3/a.bin", tmp_path / "f")
    await store.put_file("models/m/30/a.bin", tmp_path / "f")
    assert await store.delete_prefix("models/m/3") == 1
    assert await store.exists("models/m/30/a.bin")


async def test_put_file_replaces_atomically(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    (tmp_path / "v1").write_bytes(b"one")
    (tmp_path / "v2").write_bytes(b"two!")
    await store.put_file("models/m/1/x.bin", tmp_path / "v1")
    await store.put_file("models/m/1/x.bin", tmp_path / "v2")
    assert (tmp_path / "store/models/m/1/x.bin").read_bytes() == b"two!"
    assert sorted(p.name for p in (tmp_path / "store/models/m/1").iterdir()) == ["x.bin"]


async def test_put_tree_skips_symlinks_in_the_source(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside")
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"m")
    (source / "link").symlink_to(tmp_path / "secret")
    store = LocalArtifactStore(tmp_path / "store")
    assert await store.put_tree("models/m/1", source) == ["models/m/1/model.onnx"]


TRAVERSAL = [
    "",
    "../etc/passwd",
    "models/../../etc/passwd",
    "models/m/1/../../../../x",
    "/etc/passwd",
    "models//m/1/x",
    "models/m/1/x/",
    "models\\..\\x",
    "models/m/1/a\x00b",
    "models/./m",
    "models/m/1/" + "a" * 256,
    "m/" * 600,
]


@pytest.mark.parametrize("key", TRAVERSAL)
async def test_traversal_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(InvalidInput):
        await store.put_file(key, tmp_path / "f")
    with pytest.raises(InvalidInput):
        await store.exists(key)
    with pytest.raises(InvalidInput):
        await store.fetch_tree(key, tmp_path / "out")
    with pytest.raises(InvalidInput):
        await store.delete_prefix(key)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x").exists()


async def test_a_symlink_inside_the_root_cannot_lead_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "store"
    (root / "models").mkdir(parents=True)
    (root / "models" / "evil").symlink_to(outside)
    (tmp_path / "f").write_bytes(b"x")
    store = LocalArtifactStore(root)
    with pytest.raises(InvalidInput):
        await store.put_file("models/evil/1/x.bin", tmp_path / "f")
    assert list(outside.iterdir()) == []


def test_key_helpers() -> None:
    assert artifact_key("m1", 2, "sub/model.onnx") == "models/m1/2/sub/model.onnx"
    assert check_key("models/m/1/a.b") == "models/m/1/a.b"
    with pytest.raises(InvalidInput):
        version_prefix("a/b", 1)
    with pytest.raises(InvalidInput):
        artifact_key("m", 1, "../x")


def test_open_store(tmp_path: Path) -> None:
    local = open_store(str(tmp_path))
    assert isinstance(local, LocalArtifactStore) and local.describe() == f"local:{tmp_path}"
    by_url = open_store(f"file://{tmp_path}/store")
    assert isinstance(by_url, LocalArtifactStore) and by_url.root == tmp_path / "store"
    s3 = open_store("s3://my-bucket/some/prefix/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3ArtifactStore)
    assert s3.describe() == "s3://my-bucket/some/prefix"
    assert open_store("s3://my-bucket").describe() == "s3://my-bucket"
    for bad in ["", "gs://bucket/x", "http://example.com/x", "file://otherhost/x", "s3://B_/x"]:
        with pytest.raises(ValueError):
            open_store(bad)
    with pytest.raises(ValueError) as info:
        open_store("s3://AKIAKEY:topsecret@bucket/x")
    assert "topsecret" not in str(info.value)


def test_s3_store_repr_hides_credentials() -> None:
    store = S3ArtifactStore("bucket", access_key="AKIAX", secret_key="very-secret")
    assert "very-secret" not in repr(store) and "AKIAX" not in repr(store)
