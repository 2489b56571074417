"""A batch job's input file: its format, checked once, and its rows split into chunks.

JSONL is one request per line: a request body in any dialect the model is served in
(`inferd.core.bodies`), or a line of OpenAI's batch file format
(`{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {...}}`). The first line
shows which: it must be a JSON object. A later line that is not JSON is that line's error, in
its output line; a line that is JSON but contradicts the file (another endpoint, another model,
a `custom_id` seen before) makes the whole file bad (400, naming the line). Trailing blank lines
are dropped; any other line is a row.

CSV (with a header row) and Parquet are tables: each row becomes one model input row. A chunk of
a table is stored as JSONL: its first line `{"columns": [...]}`, then one JSON array of cell
values per row (strings for CSV, typed values for Parquet), converted to the model's datatypes
when the chunk runs, so a bad cell is that row's error.

Pure: bytes in, chunks out (the caller reads and stores them).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from inferd.core.bodies import OPENAI_URLS
from inferd.core.errors import InvalidField, Unsupported

JSONL = "jsonl"
CSV = "csv"
PARQUET = "parquet"
FORMATS = (JSONL, CSV, PARQUET)
TABULAR = (CSV, PARQUET)
#: A column of this name gives each row's `custom_id` (unless the model has such an input).
CUSTOM_ID = "custom_id"
_EXTENSIONS = {"jsonl": JSONL, "ndjson": JSONL, "json": JSONL, "csv": CSV, "parquet": PARQUET,
               "pq": PARQUET}  # fmt: skip
#: Longest `custom_id` kept (OpenAI's own limit is far below it).
MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class Prepared:
    """An input file checked and split: `chunks[i]` is the stored form of rows
    `i * chunk_rows` up to the next chunk's first."""

    format: str
    total: int
    chunks: list[bytes]
    #: The OpenAI route the lines name (`/v1/embeddings` ...); "" for request bodies and tables.
    endpoint: str = ""
    #: The model the lines' bodies name (OpenAI lines), if any does.
    model: str | None = None
    columns: tuple[str, ...] = field(default_factory=tuple)


def detect_format(filename: str, head: bytes, declared: str | None = None) -> str:
    """The file's format: as declared, else Parquet by its magic bytes, else by the file name's
    extension, else JSONL."""
    if declared is not None:
        if declared not in FORMATS:
            raise InvalidField("format", f"must be one of {', '.join(FORMATS)}")
        return declared
    if head.startswith(b"PAR1"):
        return PARQUET
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _EXTENSIONS.get(ext, JSONL)


def prepare(data: bytes, fmt: str, chunk_rows: int, *, model: str | None = None,
            endpoint: str | None = None, openai: bool = False) -> Prepared:  # fmt: skip
    """Checks `data` as a file of `fmt` and splits it in chunks of `chunk_rows` rows.

    `model`: every OpenAI line's `body.model` must name it (or leave it out); None: the first
    line's names the file's model, and every other line must name the same. `endpoint`: every
    OpenAI line's `url` must be it. `openai` (a `/v1/batches` file): every line must be an
    OpenAI batch line with a unique `custom_id`. Raises InvalidInput naming the line or field.
    """
    if fmt == JSONL:
        return _jsonl(data, chunk_rows, model, endpoint, openai)
    rows: Iterable[list[Any]]
    if fmt == CSV:
        columns, rows = _csv(data)
    elif fmt == PARQUET:
        columns, rows = _parquet(data)
    else:
        raise InvalidField("format", f"must be one of {', '.join(FORMATS)}")
    return _table(fmt, columns, rows, chunk_rows)


# ---- JSONL -----------------------------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidField("file", f"line {line} is not UTF-8 text") from None
    lines = [line.removesuffix(b"\r") for line in data.split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidField("file", "has no lines (JSONL: one JSON request per line)")
    return lines


def is_openai_line(doc: dict[str, Any]) -> bool:
    """Whether a JSONL line is in OpenAI's batch format rather than a bare request body."""
    return "body" in doc and ("url" in doc or "custom_id" in doc or "method" in doc)


def _jsonl(data: bytes, chunk_rows: int, model: str | None, endpoint: str | None,
           openai: bool) -> Prepared:  # fmt: skip
    lines = _lines(data)
    seen: dict[str, int] = {}
    wrapped = False
    for n, raw in enumerate(lines, 1):
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            if n == 1:
                raise InvalidField("file", "line 1 is not a JSON object: the first line shows "
                                   "the format (JSONL: one JSON request per line)")  # fmt: skip
            continue  # that line's error, in its output line
        if n == 1:
            wrapped = is_openai_line(doc)
            if openai and not wrapped:
                raise InvalidField("file", "line 1: not an OpenAI batch line ({\"custom_id\", "
                                   '"method", "url", "body"})')  # fmt: skip
        if is_openai_line(doc) != wrapped:
            what = "an OpenAI batch line" if wrapped else "a bare request body"
            raise InvalidField("file", f"line {n}: the file's lines are each {what}, as its "
                               "first line is")  # fmt: skip
        if not wrapped:
            continue
        endpoint, model = _openai_line(doc, n, endpoint, model, openai, seen)
    chunks = [b"\n".join(lines[i : i + chunk_rows]) for i in range(0, len(lines), chunk_rows)]
    return Prepared(JSONL, len(lines), chunks, endpoint or "", model)


def _openai_line(doc: dict[str, Any], n: int, endpoint: str | None, model: str | None,
                 openai: bool, seen: dict[str, int]) -> tuple[str, str | None]:  # fmt: skip
    """Checks line `n` (an OpenAI batch line) against the file; returns the file's endpoint
    and model as known after it."""
    url = doc.get("url")
    if url not in OPENAI_URLS:
        raise InvalidField(f"line {n}: url", f"must be one of {', '.join(OPENAI_URLS)}")
    if endpoint is None:
        endpoint = url
    elif url != endpoint:
        raise InvalidField(f"line {n}: url", f"must be {endpoint}, the batch's endpoint")
    if doc.get("method", "POST") != "POST":
        raise InvalidField(f"line {n}: method", "must be POST")
    custom_id = doc.get("custom_id")
    if custom_id is not None or openai:
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
            raise InvalidField(f"line {n}: custom_id",
                               f"must be a string of 1 to {MAX_CUSTOM_ID} characters")  # fmt: skip
        if custom_id in seen:
            raise InvalidField(f"line {n}: custom_id",
                               f"'{custom_id[:64]}' is on line {seen[custom_id]} too")  # fmt: skip
        seen[custom_id] = n
    body = doc.get("body")
    if not isinstance(body, dict):
        raise InvalidField(f"line {n}: body", "must be a JSON object (the request's body)")
    named = body.get("model")
    if named is not None and not isinstance(named, str):
        raise InvalidField(f"line {n}: body.model", "must be a model name")
    if model is None:
        if named is None:
            raise InvalidField(f"line {n}: body.model", "must name the model")
        model = named
    elif named is not None and named != model:
        raise InvalidField(f"line {n}: body.model",
                           f"must be '{model[:64]}': one model per batch")  # fmt: skip
    return endpoint, model


# ---- tables ----------------------------------------------------------------------------------


def _columns(names: Sequence[Any]) -> tuple[str, ...]:
    columns = tuple(str(c).strip() for c in names)
    seen: set[str] = set()
    for i, name in enumerate(columns, 1):
        if not name:
            raise InvalidField("columns", f"column {i} has no name")
        if name in seen:
            raise InvalidField("columns", f"'{name[:64]}' appears twice")
        seen.add(name)
    return columns


def _csv(data: bytes) -> tuple[tuple[str, ...], list[list[Any]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidField("file", f"line {line} is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header or not any(c.strip() for c in header):
            raise InvalidField("file", "has no header row (CSV: the first row names the columns)")
        columns = _columns(header)
        rows: list[list[Any]] = [row for row in reader if row]  # blank lines hold no row
    except csv.Error as e:
        raise InvalidField("file", f"line {reader.line_num}: {e}") from None
    return columns, rows


def _cell(value: Any) -> Any:
    """orjson's fallback for Parquet values JSON has no type for."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _parquet(data: bytes) -> tuple[tuple[str, ...], Iterator[list[Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Unsupported("format: Parquet files need pyarrow (pip install 'inferd[parquet]')") \
            from None  # fmt: skip
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several kinds for a file it cannot read
        raise InvalidField("file", f"not a Parquet file pyarrow can read ({type(e).__name__})") \
            from None  # fmt: skip
    columns = _columns(table.column_names)

    def rows() -> Iterator[list[Any]]:
        for batch in table.to_batches(max_chunksize=4096):
            for record in batch.to_pylist():
                yield [record[c] for c in table.column_names]

    return columns, rows()


def _table(fmt: str, columns: tuple[str, ...], rows: Iterable[list[Any]],
           chunk_rows: int) -> Prepared:  # fmt: skip
    head = orjson.dumps({"columns": list(columns)})
    chunks: list[bytes] = []
    current: list[bytes] = []
    total = 0
    for row in rows:
        current.append(orjson.dumps(row, default=_cell))
        total += 1
        if len(current) == chunk_rows:
            chunks.append(b"\n".join((head, *current)))
            current = []
    if current:
        chunks.append(b"\n".join((head, *current)))
    if total == 0:
        raise InvalidField("file", "has no rows")
    return Prepared(fmt, total, chunks, columns=columns)


def read_table_chunk(blob: bytes) -> tuple[tuple[str, ...], list[list[Any] | None]]:
    """A stored table chunk: its columns, and each row's cells (None: a row that cannot be
    read, which does not happen for chunks this module wrote)."""
    lines = blob.split(b"\n")
    columns = tuple(orjson.loads(lines[0])["columns"])
    rows: list[list[Any] | None] = []
    for raw in lines[1:]:
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:
            row = None
        rows.append(row if isinstance(row, list) else None)
    return columns, rows
