"""The S3 artifact store against a real S3-speaking HTTP server (moto, as a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.core.errors import InvalidInput, NotFound, Unavailable, Unprocessable
from inferd.registry.artifacts import S3ArtifactStore, open_store
from tests.conftest import free_port

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

KEY, SECRET, REGION = "testing-key", "testing-secret-value", "us-east-1"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto server did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    import boto3

    name = f"inferd-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    client.create_bucket(Bucket=name)
    return name


def store_for(endpoint: str, bucket: str, prefix: str = "tenant-a") -> S3ArtifactStore:
    store = open_store(
        f"s3://{bucket}/{prefix}",
        endpoint_url=endpoint,
        region=REGION,
        access_key=KEY,
        secret_key=SECRET,
    )
    assert isinstance(store, S3ArtifactStore)
    return store


def raw_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


async def test_round_trip(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    source = tmp_path / "src"
    files = {
        "model.onnx": os.urandom(200_000),
        "config/model.yaml": b"runtime: onnx\n",
        "weights/a/b/c.bin": os.urandom(1234),
    }
    for rel, data in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    store = store_for(moto_endpoint, bucket)
    assert store.describe() == f"s3://{bucket}/tenant-a"

    keys = await store.put_tree("models/m1/1", source)
    assert sorted(keys) == sorted(f"models/m1/1/{rel}" for rel in files)
    # Stored under the store's prefix, checked with a plain boto3 client.
    assert raw_keys(moto_endpoint, bucket) == sorted(f"tenant-a/{k}" for k in keys)
    (tmp_path / "other").write_bytes(b"neighbour")
    await store.put_file("models/m1/10/x.bin", tmp_path / "other")

    assert await store.exists("models/m1/1/weights/a/b/c.bin")
    assert not await store.exists("models/m1/1/missing.bin")
    assert await store.size_of_prefix("models/m1/1") == sum(len(d) for d in files.values())

    out = tmp_path / "out"
    assert await store.fetch_tree("models/m1/1", out) == out
    fetched = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert fetched == files

    assert await store.delete_prefix("models/m1/1") == len(files)
    assert await store.size_of_prefix("models/m1/1") == 0
    assert not await store.exists("models/m1/1/model.onnx")
    assert await store.exists("models/m1/10/x.bin"), "'1' must not match the '10' prefix"
    with pytest.raises(NotFound):
        await store.fetch_tree("models/m1/1", tmp_path / "again")


async def test_multipart_upload(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    store = store_for(moto_endpoint, bucket)
    store.MULTIPART_THRESHOLD = 5 * 2**20  # S3's minimum part size
    data = os.urandom(11 * 2**20)
    (tmp_path / "big.bin").write_bytes(data)
    await store.put_file("models/big/1/big.bin", tmp_path / "big.bin")
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    etag = client.head_object(Bucket=bucket, Key="tenant-a/models/big/1/big.bin")["ETag"]
    # A multipart upload's ETag is "<md5 of part md5s>-<part count>".
    assert etag.strip('"').split("-")[-1] == "2", etag
    await store.fetch_tree("models/big/1", tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == data


async def test_unsafe_keys_in_the_bucket_are_not_materialised(
    tmp_path: Path, moto_endpoint: str, bucket: str
) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    )
    client.put_object(Bucket=bucket, Key="tenant-a/models/m/1/ok.bin", Body=b"ok")
    client.put_object(Bucket=bucket, Key="tenant-a/models/m/1/../../../../escaped", Body=b"x")
    store = store_for(moto_endpoint, bucket)
    with pytest.raises(Unprocessable, match="unsafe key"):
        await store.fetch_tree("models/m/1", tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


async def test_bad_keys_are_refused_before_any_request(moto_endpoint: str, bucket: str) -> None:
    store = store_for(moto_endpoint, bucket)
    for key in ["../x", "models/m/1/../../x", "/abs", "a//b", "a\\b"]:
        with pytest.raises(InvalidInput):
            await store.exists(key)


async def test_closed_endpoint_is_unavailable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    secret = "do-not-leak-this-secret"
    store = S3ArtifactStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        region=REGION,
        access_key="AKIADONOTLEAK",
        secret_key=secret,
    )
    (tmp_path / "f").write_bytes(b"x")
    for call in (
        lambda: store.exists("models/m/1/x"),
        lambda: store.put_file("models/m/1/x", tmp_path / "f"),
        lambda: store.size_of_prefix("models/m/1"),
    ):
        with pytest.raises(Unavailable) as info:
            await call()
        message = info.value.message
        assert message.startswith("artifact store unavailable")
        assert secret not in message and "AKIADONOTLEAK" not in message and str(port) not in message


async def test_missing_bucket_is_unavailable(moto_endpoint: str) -> None:
    store = store_for(moto_endpoint, "no-such-bucket-here")
    with pytest.raises(Unavailable, match="NoSuchBucket"):
        await store.size_of_prefix("models/m/1")
