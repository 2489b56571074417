"""Batch job files: formats, the checks that refuse a bad file (naming its line or field), the
split into chunks, and how rows become requests and output lines."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pytest

from inferd.control import batch_rows as rows
from inferd.control.batch_input import detect_format, prepare, read_table_chunk
from inferd.core.errors import InvalidInput
from inferd.core.spec import TensorSpec

V2_LINE = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}'


def openai_line(i: int, model: str = "minilm", url: str = "/v1/embeddings") -> bytes:
    return orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": url,
                         "body": {"model": model, "input": f"text {i}"}})  # fmt: skip


def test_format_is_declared_or_detected() -> None:
    assert detect_format("in.csv", b"a,b\n") == "csv"
    assert detect_format("rows.parquet", b"PAR1") == "parquet"
    assert detect_format("upload", b"PAR1") == "parquet"  # by its bytes
    assert detect_format("x.ndjson", b"{") == "jsonl"
    assert detect_format("data", b"{") == "jsonl"
    assert detect_format("in.csv", b"{", "jsonl") == "jsonl"
    with pytest.raises(InvalidInput, match="format"):
        detect_format("in.csv", b"", "xml")


def test_jsonl_is_split_in_chunks_and_keeps_bad_lines_as_rows() -> None:
    lines = [V2_LINE] * 7 + [b'{"inputs": [', b"", V2_LINE]
    p = prepare(b"\n".join(lines) + b"\n\n\n", "jsonl", 4)
    assert p.total == 10 and len(p.chunks) == 3  # trailing blank lines are no rows
    assert [len(c.split(b"\n")) for c in p.chunks] == [4, 4, 2]
    assert b"\n".join(p.chunks).split(b"\n") == lines  # every line, in order, bad ones too
    assert p.endpoint == "" and p.model is None


@pytest.mark.parametrize(("data", "message"), [
    (b"", "file: has no lines"),
    (b"\n\n", "file: has no lines"),
    (b"not json\n" + V2_LINE, "file: line 1 is not a JSON object"),
    (V2_LINE + b"\n" + V2_LINE + b"\n\xff\xfe\n", "file: line 3 is not UTF-8"),
    (V2_LINE + b"\n" + openai_line(1), "line 2: the file's lines are each a bare request body"),
])  # fmt: skip
def test_bad_jsonl_files_are_refused_naming_the_line(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        prepare(data, "jsonl", 100)
    assert message in e.value.message


def test_openai_batch_lines_name_one_endpoint_one_model_unique_ids() -> None:
    good = b"\n".join(openai_line(i) for i in range(5))
    p = prepare(good, "jsonl", 2, openai=True)
    assert (p.total, len(p.chunks), p.endpoint, p.model) == (5, 3, "/v1/embeddings", "minilm")
    bad = {
        b"\n".join(
            [openai_line(1), openai_line(2, url="/v1/chat/completions")]
        ): "line 2: url: must be /v1/embeddings",
        b"\n".join(
            [openai_line(1), openai_line(2, model="other")]
        ): "line 2: body.model: must be 'minilm'",
        b"\n".join([openai_line(1), openai_line(1)]): "line 2: custom_id: 'r1' is on line 1",
        openai_line(1).replace(b"/v1/embeddings", b"/v1/nope"): "line 1: url: must be one of",
        V2_LINE: "line 1: not an OpenAI batch line",
    }
    for data, message in bad.items():
        with pytest.raises(InvalidInput) as e:
            prepare(data, "jsonl", 10, openai=True)
        assert message in e.value.message, e.value.message
    # an inferd job names its model: the lines must agree with it
    with pytest.raises(InvalidInput, match=r"line 1: body\.model: must be 'iris'"):
        prepare(good, "jsonl", 10, model="iris")
    # a line that is not JSON is that line's error, not the file's
    assert prepare(openai_line(1) + b"\n{oops", "jsonl", 10, openai=True).total == 2


def test_csv_rows_are_chunked_with_their_header() -> None:
    text = "a,b,custom_id\n1,2,x\n\n3,4,y\n5,6,z\n"
    p = prepare(text.encode(), "csv", 2)
    assert p.total == 3 and p.columns == ("a", "b", "custom_id") and len(p.chunks) == 2
    columns, table = read_table_chunk(p.chunks[1])
    assert columns == ("a", "b", "custom_id") and table == [["5", "6", "z"]]
    for data, message in ((b"", "no header row"), (b"a,a\n1,2\n", "'a' appears twice"),
                          (b"a,,c\n1,2,3\n", "column 2 has no name"),
                          (b"a,b\n", "has no rows")):  # fmt: skip
        with pytest.raises(InvalidInput) as e:
            prepare(data, "csv", 10)
        assert message in e.value.message


def test_parquet_rows_keep_their_types() -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"x": [1.5, 2.5, None], "n": [1, 2, 3], "v": [[1, 2], [3, 4], [5, 6]]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    p = prepare(buf.getvalue(), "parquet", 2)
    assert p.total == 3 and p.columns == ("x", "n", "v")
    _, first = read_table_chunk(p.chunks[0])
    _, last = read_table_chunk(p.chunks[1])
    assert first == [[1.5, 1, [1, 2]], [2.5, 2, [3, 4]]] and last == [[None, 3, [5, 6]]]
    with pytest.raises(InvalidInput, match="not a Parquet file"):
        prepare(b"PAR1 but not really", "parquet", 2)


# ---- rows -----------------------------------------------------------------------------------


def test_jsonl_rows_parse_or_say_why_not() -> None:
    assert rows.parse_line(V2_LINE, None, "m")[1] == rows.Row(None, "v2", orjson.loads(V2_LINE))
    cid, row = rows.parse_line(openai_line(3), None, "minilm")
    assert cid == "r3" and isinstance(row, rows.Row) and row.api == "openai.embeddings"
    for raw, code, message in (
        (b"{oops", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_json", "not a JSON object"),
        (b"", "invalid_request", "empty line"),
        (b'{"rows": 1}', "invalid_request", "line: not a request body"),
    ):
        _, err = rows.parse_line(raw, None, "m")
        assert isinstance(err, rows.RowError) and err.code == code and message in err.message
    cid, err = rows.parse_line(openai_line(4, model="other"), None, "minilm")
    assert cid == "r4" and isinstance(err, rows.RowError) and "body.model" in err.message


def test_output_lines_are_openai_shaped() -> None:
    ok = orjson.loads(rows.output_line("batch_abc", 7, "c", 200, {"data": [1]}))
    assert ok == {"id": "batch_req_abc_7", "custom_id": "c", "error": None,
                  "response": {"status_code": 200, "request_id": "batch_abc-7",
                               "body": {"data": [1]}}}  # fmt: skip
    bad = orjson.loads(rows.output_line("batch_abc", 8, None, 404, {"error": "no"}, "no"))
    assert bad["error"] == {"code": "not_found", "message": "no"}
    assert bad["response"]["status_code"] == 404
    unsent = orjson.loads(rows.failed_line("batch_abc", 9, None, rows.RowError("bad", "x")))
    assert unsent["response"] is None and unsent["error"] == {"code": "x", "message": "bad"}


IRIS = (TensorSpec("input", "FP32", (-1, 4)),)


def test_one_input_takes_the_row_in_column_order() -> None:
    lay = rows.layout(["a", "b", "c", "d", "custom_id"], IRIS, 0)
    assert lay.batched and lay.custom_id == 4 and lay.feeds[0].columns == (0, 1, 2, 3)
    good = rows.convert(lay, ["1", "2", "3.5", "4", "x"], ("a", "b", "c", "d", "custom_id"))
    assert good[0].dtype == np.float32 and good[0].tolist() == [1, 2, 3.5, 4]
    with pytest.raises(rows.RowError, match="column 'b': not a FP32 value"):
        rows.convert(lay, ["1", "zz", "3", "4", "x"], ("a", "b", "c", "d", "custom_id"))
    with pytest.raises(rows.RowError, match="column 'c': empty"):
        rows.convert(lay, ["1", "2", "", "4", "x"], ("a", "b", "c", "d", "custom_id"))
    with pytest.raises(rows.RowError, match="the row has 3 values"):
        rows.convert(lay, ["1", "2", "3"], ("a", "b", "c", "d", "custom_id"))
    with pytest.raises(InvalidInput, match="columns: the file has 3 value columns"):
        rows.layout(["a", "b", "c"], IRIS, 0)


def test_several_inputs_take_the_columns_of_their_names() -> None:
    inputs = (TensorSpec("age", "INT64", (-1,)), TensorSpec("name", "BYTES", (-1,)),
              TensorSpec("flag", "BOOL", (-1, 1)))  # fmt: skip
    columns = ("name", "flag", "age", "extra")
    lay = rows.layout(columns, inputs, 8)
    arrays = rows.convert(lay, ["ann", "true", "41.0", "ignored"], columns)
    assert [a.tolist() for a in arrays] == [41, "ann", [True]]
    body = rows.request(lay, [arrays, rows.convert(lay, ["bo", "0", "7", "-"], columns)])
    assert body["inputs"] == [
        {"name": "age", "datatype": "INT64", "shape": [2], "data": [41, 7]},
        {"name": "name", "datatype": "BYTES", "shape": [2], "data": ["ann", "bo"]},
        {"name": "flag", "datatype": "BOOL", "shape": [2, 1], "data": [True, False]},
    ]
    with pytest.raises(InvalidInput, match="columns: the model takes 3 inputs"):
        rows.layout(("a", "b"), inputs, 8)


def test_rows_share_requests_and_each_gets_its_slice() -> None:
    lay = rows.layout(["a", "b", "c", "d"], IRIS, 0)
    arrays: dict[int, list[Any]] = {i: [np.zeros(4, np.float32)] for i in range(5)}
    assert rows.groups(lay, arrays, 2) == [[0, 1], [2, 3], [4]]
    answer = {
        "model_name": "iris",
        "model_version": "1",
        "id": "shared",
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [2], "data": [0, 2]},
            {"name": "proba", "datatype": "FP64", "shape": [2, 3], "data": [1, 0, 0, 0, 0, 1]},
        ],
    }
    first, second = rows.split(lay, answer, 2)
    assert second == {
        "model_name": "iris",
        "model_version": "1",
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [1], "data": [2]},
            {"name": "proba", "datatype": "FP64", "shape": [1, 3], "data": [0, 0, 1]},
        ],
    }
    assert first["outputs"][0]["data"] == [0]
    with pytest.raises(rows.RowError, match="no row dimension"):
        rows.split(lay, {"outputs": [{"name": "y", "shape": [3], "data": [1, 2, 3]}]}, 2)
    # a model without a batch dimension takes one row per request, as it is
    single = rows.layout(["a", "b"], (TensorSpec("x", "FP32", (2,)),), 0)
    assert not single.batched
    assert rows.groups(single, {0: [np.zeros(2)], 1: [np.zeros(2)]}, 8) == [[0], [1]]
