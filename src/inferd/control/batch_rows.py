"""A batch job's rows: what each one sends to the model, and the output line it becomes.

A JSONL row is one request (`parse_line`). Table rows (CSV, Parquet) are V2 requests built from
the model's inputs (`layout`, `build`): a model with one input takes the row's values in column
order (a `[rows, columns]` tensor), one with several takes each input from the column of its
name. Rows of a model with a batch dimension share a request (`split` hands each row its own
slice of the answer); a bad cell fails its row only.

Every row becomes one output line in OpenAI's batch output shape:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, with `error`
null for a success and `{"code", "message"}` for a failure (`response` then holds the error
answer the route would have sent, or is null when nothing was sent).

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inferd.control.batch_input import CUSTOM_ID, MAX_CUSTOM_ID, is_openai_line
from inferd.core.bodies import OPENAI_URLS, body_api
from inferd.core.datatypes import numpy_dtype
from inferd.core.errors import InvalidField, InvalidInput
from inferd.core.spec import TensorSpec

#: The `error.code` of a failed line, by the status its request was answered with.
CODES = {400: "invalid_request", 401: "unauthenticated", 403: "permission_denied",
         404: "not_found", 413: "too_large", 415: "unsupported_media_type",
         429: "rate_limited", 499: "cancelled", 501: "unsupported", 503: "unavailable",
         504: "timeout"}  # fmt: skip
#: Statuses worth another try later (the model loading, overloaded, rate limited).
PASSING = frozenset({429, 503})
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


class RowError(Exception):
    """A row that cannot be sent: its line's error (status 400 unless told)."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Row:
    """One JSONL row, ready to send: its dialect and body."""

    custom_id: str | None
    api: str
    body: dict[str, Any]


def parse_line(raw: bytes, api: str | None, model: str) -> tuple[str | None, Row | RowError]:
    """A JSONL row: its `custom_id` (when it has one) and what to send, or why it cannot be."""
    if not raw.strip():
        return None, RowError("empty line")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return None, RowError(f"not valid JSON: {e}", "invalid_json")
    if not isinstance(doc, dict):
        return None, RowError("not a JSON object", "invalid_json")
    if not is_openai_line(doc):
        try:
            return None, Row(None, body_api(doc, api, "line"), doc)
        except InvalidInput as e:
            return None, RowError(e.message)
    custom_id = doc.get("custom_id")
    if not isinstance(custom_id, str) or len(custom_id) > MAX_CUSTOM_ID:
        custom_id = None
    body = doc.get("body")
    dialect = OPENAI_URLS.get(doc.get("url"))  # type: ignore[arg-type]
    if dialect is None:
        return custom_id, RowError(f"url: must be one of {', '.join(OPENAI_URLS)}")
    if not isinstance(body, dict):
        return custom_id, RowError("body: must be a JSON object")
    named = body.get("model")
    if named is not None and named != model:
        return custom_id, RowError(f"body.model: must be '{model[:64]}', the batch's model")
    return custom_id, Row(custom_id, dialect, body)


# ---- output lines ----------------------------------------------------------------------------


def line_id(batch_id: str, index: int) -> str:
    """The `id` of row `index`'s output line: the same on every run of the row."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{index}"


def output_line(batch_id: str, index: int, custom_id: str | None, status: int,
                body: dict[str, Any] | None, error: str | None = None,
                code: str | None = None) -> bytes:  # fmt: skip
    """Row `index`'s output line (no newline); `body` None: no request was sent."""
    request_id = f"{batch_id}-{index}"
    ok = 200 <= status < 300 and error is None
    doc = {
        "id": line_id(batch_id, index), "custom_id": custom_id,
        "response": None if body is None else {"status_code": status, "request_id": request_id,
                                               "body": body},
        "error": None if ok else {"code": code or CODES.get(status, "server_error"),
                                  "message": error or f"status {status}"},
    }  # fmt: skip
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def failed_line(batch_id: str, index: int, custom_id: str | None, e: RowError) -> bytes:
    return output_line(batch_id, index, custom_id, e.status, None, e.message, e.code)


# ---- tables ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feed:
    """One model input and the columns whose cells make it, in order."""

    spec: TensorSpec
    columns: tuple[int, ...]
    #: Its shape for one row (the batch dimension left out).
    row_shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """How a table's rows become a model's inputs."""

    feeds: tuple[Feed, ...]
    ncolumns: int
    #: The column that gives each row's `custom_id`, if any.
    custom_id: int | None
    #: Rows share a request (the model has a batch dimension); else one row per request.
    batched: bool


def layout(columns: Sequence[str], inputs: Sequence[TensorSpec], max_batch_size: int) -> Layout:
    """Maps `columns` onto the model's `inputs`; InvalidField naming `columns` when they do not
    fit."""
    names = {spec.name for spec in inputs}
    cid = columns.index(CUSTOM_ID) if CUSTOM_ID in columns and CUSTOM_ID not in names else None
    values = [i for i in range(len(columns)) if i != cid]
    if not values:
        raise InvalidField("columns", "the file has no value columns")
    batched = bool(inputs) and (max_batch_size > 0 or all(
        s.shape and s.shape[0] == -1 for s in inputs))  # fmt: skip
    index = {c: i for i, c in enumerate(columns)}
    required = [s for s in inputs if not s.optional]
    if not inputs:
        raise InvalidField("columns", "the model declares no inputs to fill")
    if all(s.name in index for s in required) and any(s.name in index for s in inputs):
        feeds = tuple(Feed(s, (index[s.name],), _row_shape(s, batched)) for s in inputs
                      if s.name in index)  # fmt: skip
    elif len(inputs) == 1:
        spec = inputs[0]
        shape = _row_shape(spec, batched)
        n = len(values)
        if n > 1 and (len(shape) != 1 or shape[0] not in (-1, n)):
            raise InvalidField("columns", f"the file has {n} value columns; input "
                               f"'{spec.name}' takes {list(shape)} per row")  # fmt: skip
        feeds = (Feed(spec, tuple(values), shape),)
    else:
        wanted = ", ".join(s.name for s in required)
        raise InvalidField("columns", f"the model takes {len(inputs)} inputs: name a column "
                           f"after each of {wanted}")  # fmt: skip
    return Layout(feeds, len(columns), cid, batched)


def _row_shape(spec: TensorSpec, batched: bool) -> tuple[int, ...]:
    return tuple(spec.shape[1:]) if batched and spec.shape else tuple(spec.shape)


def _scalar(cell: Any, dtype: np.dtype) -> Any:
    """A CSV cell (a string) as a value of `dtype`; ValueError when it is not one."""
    if not isinstance(cell, str):
        return cell
    text = cell.strip()
    if dtype.kind == "b":
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(text)
    if dtype.kind in "iu":
        try:
            return int(text)
        except ValueError:
            number = float(text)
            if not number.is_integer():
                raise
            return int(number)
    if dtype.kind == "f":
        return float(text)
    return cell


def _array(feed: Feed, row: list[Any], columns: Sequence[str]) -> np.ndarray:
    """The input `feed` makes of one row; RowError naming the column when a cell does not fit."""
    spec = feed.spec
    cells = [row[i] for i in feed.columns]
    for i, cell in zip(feed.columns, cells, strict=True):
        if cell is None or (isinstance(cell, str) and not cell.strip()):
            raise RowError(f"column '{columns[i][:64]}': empty")
    value: Any = cells[0] if len(cells) == 1 else cells
    dtype = numpy_dtype(spec.datatype)
    try:
        if dtype.kind == "O":
            arr = np.asarray(value, dtype=object)
            arr = np.vectorize(str, otypes=[object])(arr) if arr.size else arr
        else:
            scalars = value if isinstance(value, list) else [value]
            converted = [_scalar(c, dtype) for c in scalars]
            arr = np.asarray(converted if isinstance(value, list) else converted[0], dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        bad = next((columns[i] for i, c in zip(feed.columns, cells, strict=True)
                    if not _fits(c, dtype)), columns[feed.columns[0]])  # fmt: skip
        raise RowError(f"column '{bad[:64]}': not a {spec.datatype} value") from None
    shape = feed.row_shape
    if arr.ndim == 0 and len(shape) == 1:
        arr = arr.reshape(1)
    elif arr.ndim == 1 and arr.size == 1 and len(shape) == 0:
        arr = arr.reshape(())
    if arr.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, arr.shape,
                                                                      strict=True)):  # fmt: skip
        raise RowError(f"input '{spec.name}' takes {list(shape)} per row; the row gives "
                       f"{list(arr.shape)}")  # fmt: skip
    return arr


def _fits(cell: Any, dtype: np.dtype) -> bool:
    try:
        if isinstance(cell, list):
            return all(_fits(c, dtype) for c in cell)
        np.asarray(_scalar(cell, dtype), dtype=dtype)
        return True
    except (ValueError, TypeError, OverflowError):
        return False


def convert(lay: Layout, row: list[Any] | None, columns: Sequence[str]) -> list[np.ndarray]:
    """One row's input arrays (in `lay.feeds` order); RowError when it cannot be sent."""
    if row is None:
        raise RowError("the row cannot be read")
    if len(row) != lay.ncolumns:
        raise RowError(f"the row has {len(row)} values; the file has {lay.ncolumns} columns")
    return [_array(feed, row, columns) for feed in lay.feeds]


def custom_id_of(lay: Layout, row: list[Any] | None) -> str | None:
    if lay.custom_id is None or row is None or len(row) <= lay.custom_id:
        return None
    cell = row[lay.custom_id]
    return None if cell is None else str(cell)[:MAX_CUSTOM_ID]


def request(lay: Layout, arrays: Sequence[Sequence[np.ndarray]]) -> dict[str, Any]:
    """The V2 request body of rows whose inputs are `arrays` (one list per row; every row's
    arrays of the same shapes, and one row unless `lay.batched`)."""
    inputs = []
    for k, feed in enumerate(lay.feeds):
        data = np.stack([a[k] for a in arrays]) if lay.batched else arrays[0][k]
        flat = data.ravel().tolist()
        inputs.append({"name": feed.spec.name, "datatype": feed.spec.datatype,
                       "shape": list(data.shape), "data": flat})  # fmt: skip
    return {"inputs": inputs}


def groups(lay: Layout, arrays: dict[int, list[np.ndarray]], size: int) -> list[list[int]]:
    """Row indexes sent together: rows whose inputs have the same shapes, at most `size` per
    request (1 when the model has no batch dimension)."""
    if not lay.batched:
        return [[i] for i in arrays]
    by_shape: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i, arrs in arrays.items():
        by_shape.setdefault(tuple(a.shape for a in arrs), []).append(i)
    out: list[list[int]] = []
    for rows in by_shape.values():
        out.extend(rows[j : j + size] for j in range(0, len(rows), size))
    return out


def split(lay: Layout, body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Each of `n` rows' own V2 response from the answer to their shared request: every
    output's slice along the batch dimension; RowError when an output has none."""
    if not lay.batched:
        return [body]
    outputs = body.get("outputs")
    if not isinstance(outputs, list):
        raise RowError("the model answered no outputs", "server_error", 500)
    slices: list[tuple[dict[str, Any], list[int], int]] = []
    for out in outputs:
        shape = out.get("shape") or []
        if not shape or shape[0] != n:
            raise RowError(f"output '{out.get('name')}' has no row dimension (shape {shape}, "
                           f"{n} rows sent)", "server_error", 500)  # fmt: skip
        rest = list(shape[1:])
        slices.append((out, rest, math.prod(rest)))
    meta = {k: v for k, v in body.items() if k not in ("outputs", "id")}
    rows = []
    for i in range(n):
        outs = []
        for out, rest, size in slices:
            one = {k: v for k, v in out.items() if k not in ("shape", "data")}
            one["shape"] = [1, *rest]
            one["data"] = out["data"][i * size : (i + 1) * size]
            outs.append(one)
        rows.append({**meta, "outputs": outs})
    return rows
