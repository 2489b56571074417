"""Where version artifacts live: a local directory or an S3-compatible bucket.

Keys look like ``models/<model_id>/<version>/<relative/file/path>``. Every key and every
relative path is checked before it touches a filesystem or a bucket, and every local write is
confined to the store's root after resolving symlinks (MLflow CVE-2023-6977, Triton
CVE-2023-31036: denylists get bypassed, so the resolved path is what is checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from inferd.core.errors import InvalidInput, NotFound, Unavailable, Unprocessable

#: S3 caps keys at 1024 bytes; the same cap keeps local paths well under PATH_MAX.
MAX_KEY_BYTES = 1024
#: Most filesystems cap one name at 255 bytes (NAME_MAX).
MAX_SEGMENT_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
T = TypeVar("T")


def check_key(key: str, what: str = "key") -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidInput.

    Refused: empty, absolute, backslashes, NUL or other control characters, empty, `.` or `..`
    segments, over 1024 bytes, or one segment over 255 bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"{what}: must be a non-empty path")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidInput(f"{what}: longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key:
        raise InvalidInput(f"{what}: backslashes are not allowed")
    if _CONTROL.search(key):
        raise InvalidInput(f"{what}: control characters are not allowed")
    if key.startswith("/"):
        raise InvalidInput(f"{what}: absolute paths are not allowed")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidInput(f"{what}: empty path segments are not allowed")
        if segment in (".", ".."):
            raise InvalidInput(f"{what}: '.' and '..' segments are not allowed")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidInput(f"{what}: a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return key


def version_prefix(model_id: str, version: str | int) -> str:
    """The prefix that holds one version's files: ``models/<model_id>/<version>``."""
    for name, value in (("model_id", str(model_id)), ("version", str(version))):
        check_key(value, name)
        if "/" in value:
            raise InvalidInput(f"{name}: must not contain '/'")
    return f"models/{model_id}/{version}"


def artifact_key(model_id: str, version: str | int, relpath: str) -> str:
    """The key of one file of a version: ``models/<model_id>/<version>/<relpath>``."""
    return check_key(f"{version_prefix(model_id, version)}/{check_key(relpath, 'path')}")


def _join(prefix: str, rel: str) -> str:
    return check_key(f"{prefix}/{rel}")


def _tree_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix relative name, path) of every regular file under root; symlinks are skipped
    rather than followed, so a link planted in a staging dir cannot pull in outside files."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        dirnames.sort()
        for name in sorted(filenames):
            path = base / name
            if path.is_symlink() or not path.is_file():
                continue
            yield path.relative_to(root).as_posix(), path


def _confined(base: Path, rel: str) -> Path:
    """`base/rel`, refusing anything whose resolved location leaves base (symlinks included)."""
    root = base.resolve()
    target = (root / rel).resolve()
    if target == root or not target.is_relative_to(root):
        raise InvalidInput("path: escapes the artifact directory")
    return target


class ArtifactStore(Protocol):
    """Storage for version artifacts, addressed by checked keys (see `check_key`)."""

    async def put_file(self, key: str, path: Path) -> None:
        """Store the local file `path` under `key` (replacing any previous object)."""
        ...

    async def put_tree(self, prefix: str, root: Path) -> list[str]:
        """Store every regular file under `root` as `prefix/<relative path>`; return the keys."""
        ...

    async def fetch_tree(self, prefix: str, dest: Path) -> Path:
        """Materialise every object under `prefix/` into `dest` (relative paths kept)."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/`; return how many were deleted."""
        ...

    async def size_of_prefix(self, prefix: str) -> int:
        """Total bytes of the objects under `prefix/`."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly `key`."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (replacing any previous object)."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The object stored under `key` (NotFound when there is none)."""
        ...

    def describe(self) -> str:
        """Where the store is, for logs (never credentials)."""
        ...


class LocalArtifactStore:
    """Artifacts in a local directory; writes are atomic (temp file + os.replace) and confined.

    File I/O runs in worker threads so the event loop never waits on the disk.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root).absolute()

    @property
    def root(self) -> Path:
        return self._root

    def describe(self) -> str:
        return f"local:{self._root}"

    def _path(self, key: str) -> Path:
        return _confined(self._root, check_key(key))

    # ---- writes ------------------------------------------------------------------------

    def _put_sync(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after mkdir: a directory created by someone else may be a symlink by now.
        if not target.parent.resolve().is_relative_to(self._root.resolve()):
            raise InvalidInput("path: escapes the artifact directory")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def put_file(self, key: str, path: Path) -> None:
        check_key(key)
        await asyncio.to_thread(self._put_sync, key, Path(path))

    def _put_bytes_sync(self, key: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".bytes-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self._put_sync(key, Path(tmp))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def put_bytes(self, key: str, data: bytes) -> None:
        check_key(key)
        await asyncio.to_thread(self._put_bytes_sync, key, data)

    def _get_bytes_sync(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"artifact '{key}' not found") from None

    async def get_bytes(self, key: str) -> bytes:
        check_key(key)
        return await asyncio.to_thread(self._get_bytes_sync, key)

    def _put_tree_sync(self, prefix: str, root: Path) -> list[str]:
        files = [(_join(prefix, rel), path) for rel, path in _tree_files(root)]
        for key, path in files:
            self._put_sync(key, path)
        return [key for key, _ in files]

    async def put_tree(self, prefix: str, root: Path) -> list[str]:
        check_key(prefix, "prefix")
        return await asyncio.to_thread(self._put_tree_sync, prefix, Path(root))

    # ---- reads -------------------------------------------------------------------------

    def _fetch_tree_sync(self, prefix: str, dest: Path) -> Path:
        source = self._path(prefix)
        if not source.is_dir():
            raise NotFound(f"no artifacts under '{prefix}'")
        dest.mkdir(parents=True, exist_ok=True)
        for rel, path in _tree_files(source):
            target = _confined(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return dest

    async def fetch_tree(self, prefix: str, dest: Path) -> Path:
        check_key(prefix, "prefix")
        return await asyncio.to_thread(self._fetch_tree_sync, prefix, Path(dest))

    def _delete_sync(self, prefix: str) -> int:
        source = self._path(prefix)
        if not source.is_dir() or source.is_symlink():
            return 0
        count = sum(1 for _ in _tree_files(source))
        shutil.rmtree(source)
        return count

    async def delete_prefix(self, prefix: str) -> int:
        check_key(prefix, "prefix")
        return await asyncio.to_thread(self._delete_sync, prefix)

    def _size_sync(self, prefix: str) -> int:
        source = self._path(prefix)
        if not source.is_dir():
            return 0
        return sum(path.stat().st_size for _, path in _tree_files(source))

    async def size_of_prefix(self, prefix: str) -> int:
        check_key(prefix, "prefix")
        return await asyncio.to_thread(self._size_sync, prefix)

    def _exists_sync(self, key: str) -> bool:
        path = self._path(key)
        return path.is_file() and not path.is_symlink()

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await asyncio.to_thread(self._exists_sync, key)


class S3ArtifactStore:
    """Artifacts in an S3-compatible bucket (AWS, MinIO, Ceph...) under an optional prefix.

    boto3 is an optional extra, imported on first use; its blocking calls run in worker threads.
    Connection problems surface as `Unavailable` with a message that never names the endpoint
    or the credentials.
    """

    #: Files over this size go up in parts (boto3's managed transfer).
    MULTIPART_THRESHOLD = 64 * 2**20

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        if not _BUCKET.match(bucket):
            raise ValueError("S3 bucket name must be 3-63 characters of a-z, 0-9, '.' and '-'")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix, "prefix")
        self._bucket = bucket
        self._prefix = prefix
        self._endpoint_url = endpoint_url
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._client_obj: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def __repr__(self) -> str:
        # Never the credentials, even in a debugger or a log of the object.
        return f"S3ArtifactStore({self.describe()!r})"

    # ---- plumbing ----------------------------------------------------------------------

    def _client(self) -> Any:
        # Built lazily in a worker thread: creating a boto3 client reads config files.
        with self._lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(
                    aws_access_key_id=self._access_key,
                    aws_secret_access_key=self._secret_key,
                    region_name=self._region,
                )
                config = Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    # Custom endpoints (MinIO, moto) rarely have wildcard DNS for bucket hosts.
                    s3={"addressing_style": "path" if self._endpoint_url else "auto"},
                )
                self._client_obj = session.client(
                    "s3", endpoint_url=self._endpoint_url, config=config
                )
            return self._client_obj

    def _full(self, key: str) -> str:
        check_key(key)
        return check_key(f"{self._prefix}/{key}" if self._prefix else key)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(_translate_errors, fn)

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        full = self._full(prefix) + "/"  # the slash: "models/m/3" must not match "models/m/30"
        paginator = self._client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield {"Key": obj["Key"], "Rel": obj["Key"][len(full) :], "Size": obj["Size"]}

    # ---- operations --------------------------------------------------------------------

    def _put_sync(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.MULTIPART_THRESHOLD)
        self._client().upload_file(str(path), self._bucket, self._full(key), Config=config)

    async def put_file(self, key: str, path: Path) -> None:
        self._full(key)
        await self._call(lambda: self._put_sync(key, Path(path)))

    async def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        await self._call(lambda: self._client().put_object(Bucket=self._bucket, Key=full,
                                                           Body=data))  # fmt: skip

    def _get_bytes_sync(self, key: str) -> bytes:
        client = self._client()
        try:
            answer = client.get_object(Bucket=self._bucket, Key=self._full(key))
        except client.exceptions.NoSuchKey:
            raise NotFound(f"artifact '{key}' not found") from None
        data: bytes = answer["Body"].read()
        return data

    async def get_bytes(self, key: str) -> bytes:
        self._full(key)
        return await self._call(lambda: self._get_bytes_sync(key))

    def _put_tree_sync(self, prefix: str, root: Path) -> list[str]:
        files = [(_join(prefix, rel), path) for rel, path in _tree_files(root)]
        for key, _ in files:
            self._full(key)  # check every key before the first upload
        for key, path in files:
            self._put_sync(key, path)
        return [key for key, _ in files]

    async def put_tree(self, prefix: str, root: Path) -> list[str]:
        check_key(prefix, "prefix")
        return await self._call(lambda: self._put_tree_sync(prefix, Path(root)))

    def _fetch_tree_sync(self, prefix: str, dest: Path) -> Path:
        client = self._client()
        objects = [o for o in self._list(prefix) if not o["Rel"].endswith("/")]
        if not objects:
            raise NotFound(f"no artifacts under '{prefix}'")
        dest.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            # A listing is data from outside: a key planted by another writer is checked
            # like any input before it becomes a path.
            try:
                target = _confined(dest, check_key(obj["Rel"]))
            except InvalidInput:
                raise Unprocessable(
                    f"artifact store holds an unsafe key under '{prefix}'"
                ) from None
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            os.close(fd)
            try:
                client.download_file(self._bucket, obj["Key"], tmp)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return dest

    async def fetch_tree(self, prefix: str, dest: Path) -> Path:
        check_key(prefix, "prefix")
        return await self._call(lambda: self._fetch_tree_sync(prefix, Path(dest)))

    def _delete_sync(self, prefix: str) -> int:
        client = self._client()
        keys = [o["Key"] for o in self._list(prefix)]
        deleted = 0
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[start : start + 1000]
            answer = client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            if answer.get("Errors"):
                raise Unavailable("artifact store could not delete some objects")
            deleted += len(batch)
        return deleted

    async def delete_prefix(self, prefix: str) -> int:
        check_key(prefix, "prefix")
        return await self._call(lambda: self._delete_sync(prefix))

    async def size_of_prefix(self, prefix: str) -> int:
        check_key(prefix, "prefix")
        return await self._call(lambda: sum(int(o["Size"]) for o in self._list(prefix)))

    def _exists_sync(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client().head_object(Bucket=self._bucket, Key=self._full(key))
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    async def exists(self, key: str) -> bool:
        self._full(key)
        return await self._call(lambda: self._exists_sync(key))


def _translate_errors(fn: Callable[[], T]) -> T:
    """Run a boto3 call; map its failures onto inferd errors with safe messages."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return fn()
    except NoCredentialsError:
        raise Unavailable("artifact store unavailable (no credentials configured)") from None
    except ClientError as e:
        # The error code (e.g. AccessDenied, NoSuchBucket) is safe; the message may echo
        # request details, so it stays in the chained exception for server logs only.
        code = str(e.response.get("Error", {}).get("Code", "error"))[:64]
        raise Unavailable(f"artifact store refused the request ({code})") from e
    except (BotoCoreError, Boto3Error) as e:
        # Boto3Error covers S3UploadFailedError, which managed uploads raise instead.
        raise Unavailable("artifact store unavailable") from e


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> ArtifactStore:
    """Build the store for `url`: a filesystem path or ``file://`` URL, or ``s3://bucket/prefix``.

    Anything else is a configuration error (ValueError); the message names the scheme only, so
    a URL carrying credentials is never echoed.
    """
    if not url or not url.strip():
        raise ValueError("artifact store URL is empty (use a path, file:// or s3://)")
    if "://" not in url:
        return LocalArtifactStore(Path(url).expanduser())
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None:
        raise ValueError("artifact store URL must not carry credentials; pass them separately")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file:// artifact store URLs must name a local path (file:///path)")
        path = unquote(parts.path)
        if not path:
            raise ValueError("file:// artifact store URL has no path")
        return LocalArtifactStore(Path(path))
    if scheme == "s3":
        if parts.query or parts.fragment:
            raise ValueError("s3:// artifact store URL must not have a query or fragment")
        return S3ArtifactStore(
            parts.netloc,
            parts.path.strip("/"),
            endpoint_url=endpoint_url,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
        )
    raise ValueError(
        f"unsupported artifact store URL scheme '{scheme[:16]}' (use a path, file:// or s3://)"
    )


__all__ = [
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "artifact_key",
    "check_key",
    "open_store",
    "version_prefix",
]
