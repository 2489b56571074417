"""Streaming artifact uploads: multipart/form-data (a `file` part + an optional `meta` JSON part)
or a raw `application/octet-stream` body. Bytes go straight to a staging file with a running
sha256 and a hard size cap; nothing is buffered in memory and nothing is left behind on failure.
`receive_form` takes other small fields beside the file (batch inputs, `/v1/files`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from inferd.control.catalog import Staged
from inferd.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

#: Caps on the form itself (the file's own cap is the upload limit).
MAX_FIELDS = 8
MAX_FIELD_BYTES = 4 * 2**20
MAX_HEADER_BYTES = 16 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._\-]")


def safe_filename(raw: str) -> str:
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = _SAFE.sub("_", name).strip("._")[:200]
    return name or "artifact"


@dataclass
class _Form:
    target: Path
    limit: int
    #: The parts besides `file` the form may have (others are refused).
    allowed: tuple[str, ...] = ("meta",)
    file: IO[bytes] | None = None
    filename: str = ""
    size: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    fields: dict[str, bytearray] = field(default_factory=dict)
    parts: int = 0
    files: int = 0
    header_bytes: int = 0
    name: str = ""
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    current: bytearray | None = None
    in_file: bool = False

    # python-multipart callbacks ---------------------------------------------------------

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FIELDS:
            raise InvalidInput(f"multipart: more than {MAX_FIELDS} parts")
        self.headers = {}
        self.current = None
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = self.header_value.decode(
            "latin-1"
        )
        self.header_field, self.header_value = bytearray(), bytearray()

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_HEADER_BYTES:
            raise InvalidInput("multipart: part headers are too large")

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("latin-1")
        filename = params.get(b"filename")
        if name == "file" and filename is not None:
            self.files += 1
            if self.files > 1:
                raise InvalidInput("file: send one file per upload")
            self.filename = safe_filename(filename.decode("utf-8", "replace"))
            self.file = self.target.open("wb")
            self.in_file = True
        elif name in self.allowed:
            self.current = self.fields.setdefault(name, bytearray())
        else:
            sent = ", ".join(f"'{n}'" for n in ("file", *self.allowed))
            raise InvalidInput(f"multipart: unexpected part '{name[:64]}' (send {sent})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.in_file:
            self.size += len(chunk)
            if self.size > self.limit:
                raise PayloadTooLarge(f"file: over the {self.limit} byte upload limit")
            self.sha.update(chunk)
            assert self.file is not None
            self.file.write(chunk)
        elif self.current is not None:
            if len(self.current) + len(chunk) > MAX_FIELD_BYTES:
                raise InvalidInput(f"{self.name_of_current()}: too large")
            self.current += chunk

    def name_of_current(self) -> str:
        return next((k for k, v in self.fields.items() if v is self.current), "field")

    def on_part_end(self) -> None:
        if self.in_file and self.file is not None:
            self.file.close()
        self.in_file = False


async def receive_upload(
    request: Request, target: Path, limit: int
) -> tuple[Staged, dict[str, Any]]:
    """Stream the request body into `target`; returns the staged file and the `meta` object."""
    staged, fields = await receive_form(request, target, limit, ("meta",))
    try:
        return staged, _meta(fields.get("meta", b""))
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise


async def receive_form(
    request: Request, target: Path, limit: int, allowed: tuple[str, ...]
) -> tuple[Staged, dict[str, bytes]]:
    """Stream the request body into `target`; returns the staged file and the form's other
    parts (`allowed` names them; a raw octet-stream body takes them from the query string)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    # multipart overhead is small: a body far over the cap cannot hold a file under it
    if declared is not None and declared.isdigit() and int(declared) > limit + 2 * MAX_FIELD_BYTES:
        raise PayloadTooLarge(f"file: over the {limit} byte upload limit")
    try:
        if ctype == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary or len(boundary) > 200:
                raise InvalidInput("multipart: missing or invalid boundary")
            form = _Form(target, limit, allowed)
            callbacks = {name: getattr(form, name) for name in (
                "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                "on_headers_finished", "on_part_data", "on_part_end")}  # fmt: skip
            parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
            try:
                async for chunk in request.stream():
                    parser.write(chunk)
                parser.finalize()
            except ParseError as e:  # a malformed form is the client's error, not ours
                raise InvalidInput(f"multipart: malformed body ({e})") from None
            finally:
                if form.file is not None and not form.file.closed:
                    form.file.close()
            if form.files != 1:
                raise InvalidInput("file: the form has no 'file' part")
            fields = {k: bytes(v) for k, v in form.fields.items()}
            staged = Staged(target, form.filename, form.size, form.sha.hexdigest(),
                            f"upload:{form.filename}")  # fmt: skip
        elif ctype == b"application/octet-stream":
            staged = await _raw(request, target, limit)
            query = request.query_params
            fields = {k: query[k].encode() for k in allowed if k in query}
        else:
            parts = " + ".join(("file", *allowed))
            raise UnsupportedMediaType(
                f"upload as multipart/form-data ({parts}) or application/octet-stream"
            )
    except ClientDisconnect:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise InvalidInput("file: the client went away before the upload finished") from None
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    if staged.size == 0:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise InvalidInput("file: empty")
    return staged, fields


async def _raw(request: Request, target: Path, limit: int) -> Staged:
    sha = hashlib.sha256()
    size = 0
    with target.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"file: over the {limit} byte upload limit")
            sha.update(chunk)
            f.write(chunk)
    name = safe_filename(request.headers.get("x-filename", "artifact"))
    return Staged(target, name, size, sha.hexdigest(), f"upload:{name}")


def _meta(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"meta: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("meta: must be a JSON object")
    return doc
