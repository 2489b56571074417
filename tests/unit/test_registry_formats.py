"""Format detection from content: real artifacts built here, pickles that would plant a canary."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inferd.core.errors import Unprocessable
from inferd.registry.formats import Format, detect_dir_format, detect_format


class Canary:
    """Unpickling this creates the canary file: builtins.open(path, "w")."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "canary-was-created"


def _onnx_model(path: Path) -> Path:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    return x, (x[:, 0] > 0.5).astype(int)


# ---- data-only formats --------------------------------------------------------------------------


def test_onnx(tmp_path: Path) -> None:
    fmt = detect_format(_onnx_model(tmp_path / "model.bin"))
    assert fmt == Format("onnx", "onnx", False)


def _external_data_model(location: str) -> bytes:
    """An ONNX model whose one weight lives in an external file at `location`."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("W", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["X", "W"], ["Y"])], "g", [x], [y], [weight])
    return bytes(helper.make_model(graph).SerializeToString())


def test_onnx_with_external_data_outside_its_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_external_data_model("../../etc/passwd"))
    with pytest.raises(Unprocessable, match="external data"):
        detect_format(path)


def test_onnx_external_data_location_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    # Found by tests/fuzz (formats): protobuf hands a non-UTF-8 string back as bytes, and the
    # location check raised TypeError (a 500) instead of refusing the file.
    raw = _external_data_model("..Z../etc/passwd")
    path = tmp_path / "model.onnx"
    path.write_bytes(raw.replace(b"..Z..", b"..\x8e.."))  # same length: framing intact
    with pytest.raises(Unprocessable, match=r"external data location 'b'\.\.\\x8e"):
        detect_format(path)


def test_skops(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    path = tmp_path / "model.onnx"  # misleading name on purpose
    sio.dump(LogisticRegression().fit(*_xy()), path)
    assert detect_format(path) == Format("skops", "sklearn", False)


@pytest.mark.parametrize("ext", ["json", "ubj"])
def test_xgboost(tmp_path: Path, ext: str) -> None:
    import xgboost as xgb

    x, y = _xy()
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=y), 2)
    booster.save_model(tmp_path / f"m.{ext}")
    renamed = tmp_path / "weights.bin"
    (tmp_path / f"m.{ext}").rename(renamed)
    assert detect_format(renamed) == Format("xgboost", "xgboost", False)


def test_lightgbm_text(tmp_path: Path) -> None:
    import lightgbm as lgb

    x, y = _xy()
    model = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 2)
    model.save_model(tmp_path / "model.txt")
    assert detect_format(tmp_path / "model.txt") == Format("lightgbm", "lightgbm", False)


def _safetensors_bytes(header_len_delta: int = 0) -> bytes:
    data = np.arange(6, dtype=np.float32).tobytes()
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(data)]}}
    ).encode()
    return struct.pack("<Q", len(header) + header_len_delta) + header + data


def test_safetensors_real_and_handmade(tmp_path: Path) -> None:
    import torch

    try:
        from safetensors.torch import save_file
    except ImportError:
        save_file = None
    path = tmp_path / "a.safetensors"
    path.write_bytes(_safetensors_bytes())
    assert detect_format(path) == Format("safetensors", None, False)
    if save_file is not None:
        save_file({"w": torch.ones(3, 2)}, str(tmp_path / "b.bin"))
        assert detect_format(tmp_path / "b.bin").name == "safetensors"


@pytest.mark.parametrize("delta", [10_000, 1, -1])
def test_safetensors_with_a_lying_header_is_not_safetensors(tmp_path: Path, delta: int) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_bytes(delta))
    with pytest.raises(Unprocessable, match="unrecognised artifact format"):
        detect_format(path)


def test_safetensors_offsets_must_cover_the_body(tmp_path: Path) -> None:
    data = np.zeros(4, dtype=np.float32).tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data + b"extra-trailing")
    with pytest.raises(Unprocessable):
        detect_format(path)


def test_gguf_and_hdf5(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 64)
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    assert detect_format(tmp_path / "m.gguf") == Format("gguf", None, False)
    assert detect_format(tmp_path / "m.h5") == Format("hdf5", None, True)


# ---- torch ------------------------------------------------------------------------------------


def test_torchscript(tmp_path: Path) -> None:
    import torch

    module = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, torch.ones(1, 2)), tmp_path / "m.pt")
    assert detect_format(tmp_path / "m.pt") == Format("torchscript", "torch", False)


def test_torch_export(tmp_path: Path) -> None:
    import torch

    program = torch.export.export(torch.nn.Linear(2, 2), (torch.ones(1, 2),))
    torch.export.save(program, tmp_path / "m.pt2")
    assert detect_format(tmp_path / "m.pt2") == Format("torch_export", "torch", False)


def test_torch_save_pickle_executes_code_and_detection_never_runs_it(
    tmp_path: Path, canary: Path
) -> None:
    import torch

    torch.save({"w": torch.ones(2), "payload": Canary(canary)}, tmp_path / "m.onnx")
    fmt = detect_format(tmp_path / "m.onnx")
    assert fmt == Format("torch_pickle", "torch", True)
    assert not canary.exists()


# ---- pickle and joblib ------------------------------------------------------------------------


def test_the_canary_payload_is_live(tmp_path: Path, canary: Path) -> None:
    # Guards the tests below: unpickling really does create the file (and returns it, open).
    pickle.loads(pickle.dumps(Canary(canary))).close()
    assert canary.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_pickle_named_onnx_is_still_pickle(tmp_path: Path, canary: Path, protocol: int) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps(Canary(canary), protocol=protocol))
    fmt = detect_format(path)
    assert (fmt.name, fmt.runtime, fmt.executes_code) == ("pickle", "sklearn", True)
    assert not canary.exists()


@pytest.mark.parametrize(
    "compress", [0, 3, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3)]
)
def test_joblib_plain_and_compressed(tmp_path: Path, canary: Path, compress: object) -> None:
    import joblib

    path = tmp_path / "model.safetensors"
    joblib.dump({"w": np.ones(3), "payload": Canary(canary)}, path, compress=compress)
    fmt = detect_format(path)
    assert fmt.name in {"pickle", "joblib"}
    assert fmt.runtime == "sklearn" and fmt.executes_code
    if compress != 0:
        assert fmt.name == "joblib"
    assert not canary.exists()


def test_compressed_bomb_is_only_peeked_at(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as f:
        f.write(pickle.dumps([0], protocol=4))
        for _ in range(64):
            f.write(b"\x00" * 2**20)
    assert detect_format(path).name == "joblib"


# ---- archives and junk ------------------------------------------------------------------------


def test_zip_needing_an_unsupported_version_is_unprocessable(tmp_path: Path) -> None:
    # Found by tests/fuzz (formats): zipfile raises NotImplementedError for a central directory
    # entry that needs a newer zip version than it reads; that escaped detection (a 500).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/data.bin", b"x")
    raw = bytearray(buf.getvalue())
    entry = raw.index(b"PK\x01\x02")
    raw[entry + 6 : entry + 8] = (226).to_bytes(2, "little")  # "version needed": 22.6
    (tmp_path / "m.zip").write_bytes(bytes(raw))
    with pytest.raises(Unprocessable, match=r"'m\.zip' is a damaged zip"):
        detect_format(tmp_path / "m.zip")


def test_plain_zip_and_tars_are_archives(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.onnx", "w") as zf:
        zf.writestr("model/model.onnx", b"x")
    assert detect_format(tmp_path / "a.onnx") == Format("zip", None, False, archive=True)
    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        path = tmp_path / f"a-{mode[-2:]}.bin"
        with tarfile.open(path, mode) as tf:
            info = tarfile.TarInfo("model/weights.bin")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
        assert detect_format(path) == Format("tar", None, False, archive=True), mode


@pytest.mark.parametrize(
    "content",
    [
        b"\x00" * 100,
        b"hello world, not a model\n",
        b'{"not": "xgboost"}',
        b"\x08\x96\x01junk",
        b"\x08\x07\x12\x03abc",
    ],
)
def test_garbage_is_unprocessable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(Unprocessable, match="unrecognised artifact format"):
        detect_format(path)


def test_empty_file_is_unprocessable(tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(b"")
    with pytest.raises(Unprocessable):
        detect_format(tmp_path / "m.pkl")


# ---- directories ------------------------------------------------------------------------------


def test_dir_transformers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(_safetensors_bytes())
    (tmp_path / "tokenizer.json").write_text("{}")
    assert detect_dir_format(tmp_path).name == "transformers"


def test_dir_transformers_needs_real_safetensors(tmp_path: Path, canary: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(Canary(canary), protocol=4))
    fmt = detect_dir_format(tmp_path)
    assert fmt.name == "pickle" and fmt.executes_code
    assert not canary.exists()


def test_dir_python_model(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("class Model: pass\n")
    _onnx_model(tmp_path / "model.onnx")
    assert detect_dir_format(tmp_path) == Format("python", "python", True)


def test_dir_with_exactly_one_model_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _onnx_model(tmp_path / "sub" / "model.onnx")
    (tmp_path / "README.md").write_text("# my model\n")
    assert detect_dir_format(tmp_path).name == "onnx"


def test_dir_with_two_model_files_names_both(tmp_path: Path) -> None:
    _onnx_model(tmp_path / "a.onnx")
    (tmp_path / "b.bin").write_bytes(pickle.dumps([1], protocol=4))
    with pytest.raises(Unprocessable, match=r"a\.onnx \(onnx\).*b\.bin \(pickle\)"):
        detect_dir_format(tmp_path)


def test_dir_with_nothing_recognisable(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(Unprocessable, match=r"notes\.txt"):
        detect_dir_format(tmp_path)
