"""Each runtime returns exactly what its framework returns, and refuses unsafe or unclear models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

from inferd.core.errors import (
    InvalidInput,
    ModelExecutionError,
    ModelLoadError,
    UntrustedArtifact,
)
from inferd.core.spec import ModelSpec, TensorSpec, parse_model_config
from inferd.runtimes import Runtime, detect_runtime, runtime_class

ROOT = Path(__file__).resolve().parents[2]


def _builders() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "inferd_example_builders", ROOT / "examples" / "build_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _builders()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example repository, built once into a temporary directory."""
    out = tmp_path_factory.mktemp("models")
    build.build(out)
    return out


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return build.iris()[0][::10].copy()  # 15 rows of FP32 features


def spec_of(repo: Path, name: str) -> ModelSpec:
    path = repo / name / "model.yaml"
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    return parse_model_config(name, raw)


def load(spec: ModelSpec, version_dir: Path, runtime: str | None = None) -> Runtime:
    name = runtime or spec.runtime or detect_runtime(version_dir)
    rt = runtime_class(name)(spec, "1", version_dir)
    rt.load()
    return rt


def dicts(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [t.to_dict() for t in specs]


def version_dir(tmp_path: Path) -> Path:
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------- onnx


def test_onnx_iris_matches_onnxruntime(repo: Path, x: np.ndarray) -> None:
    import onnxruntime as ort

    vdir = repo / "iris_onnx" / "1"
    rt = load(spec_of(repo, "iris_onnx"), vdir)
    inputs, outputs = rt.signature()
    assert dicts(inputs) == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert dicts(outputs) == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    session = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    got = rt.infer({"input": x})
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_array_equal(got["probabilities"], proba)
    subset = rt.infer({"input": x}, outputs=["probabilities"])
    assert list(subset) == ["probabilities"]
    np.testing.assert_array_equal(subset["probabilities"], proba)
    with pytest.raises(InvalidInput, match="nope"):
        rt.infer({"input": x}, outputs=["nope"])


def test_onnx_simple_add_sub(repo: Path) -> None:
    rt = load(spec_of(repo, "simple"), repo / "simple" / "1")
    inputs, outputs = rt.signature()
    assert [(t.name, t.datatype, t.shape) for t in inputs + outputs] == [
        (n, "INT32", (-1, 16)) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")
    ]
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    got = rt.infer({"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(got["OUTPUT0"], a + b)
    np.testing.assert_array_equal(got["OUTPUT1"], a - b)
    assert got["OUTPUT0"].dtype == np.int32


def test_onnx_zipmap_refused_clearly(tmp_path: Path, x: np.ndarray) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500).fit(*build.iris())
    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 4]))])
    vdir = version_dir(tmp_path)
    (vdir / "model.onnx").write_bytes(onx.SerializeToString())
    with pytest.raises(ModelLoadError, match="zipmap"):
        load(ModelSpec(name="m"), vdir, "onnx")


def test_onnx_string_tensors_round_trip_as_bytes(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])
    out = helper.make_tensor_value_info("same", TensorProto.STRING, ["n"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])], "g", [value], [out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    vdir = version_dir(tmp_path)
    (vdir / "model.onnx").write_bytes(model.SerializeToString())
    spec = ModelSpec(name="m", parameters={"intra_op_threads": "1", "execution_mode": "parallel"})
    rt = load(spec, vdir)
    assert dicts(rt.signature()[0]) == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    text = np.array([b"abc", "héllo".encode(), b""], dtype=object)
    got = rt.infer({"text": text})["same"]
    assert got.dtype == object
    assert got.tolist() == text.tolist()


def test_onnx_bad_parameters_and_corrupt_file(tmp_path: Path) -> None:
    vdir = version_dir(tmp_path)
    build.build_simple(vdir / "model.onnx")
    bad = ModelSpec(name="m", parameters={"graph_optimization_level": "max"})
    with pytest.raises(ModelLoadError, match="graph_optimization_level"):
        load(bad, vdir, "onnx")
    (vdir / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError) as info:
        load(ModelSpec(name="m"), vdir, "onnx")
    assert str(tmp_path) not in info.value.message  # no server paths in user-facing reasons


# ---------------------------------------------------------------- sklearn


def test_sklearn_skops_matches_estimator(repo: Path, x: np.ndarray) -> None:
    import skops.io as sio

    vdir = repo / "iris_sklearn" / "1"
    rt = load(spec_of(repo, "iris_sklearn"), vdir)
    inputs, outputs = rt.signature()
    assert dicts(inputs) == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert dicts(outputs) == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    model = sio.load(vdir / "model.skops", trusted=["sklearn.tree._tree.Tree"])
    got = rt.infer({"input": x})
    np.testing.assert_array_equal(got["predict"], model.predict(x))
    np.testing.assert_array_equal(got["predict_proba"], model.predict_proba(x))
    only = rt.infer({"input": x}, outputs=["predict_proba"])
    assert list(only) == ["predict_proba"]


def test_sklearn_skops_untrusted_type_refused(repo: Path) -> None:
    vdir = repo / "iris_sklearn" / "1"
    with pytest.raises(UntrustedArtifact, match=r"sklearn\.tree\._tree\.Tree"):
        load(ModelSpec(name="iris_sklearn", runtime="sklearn"), vdir)
    other = ModelSpec(name="iris_sklearn", parameters={"trusted_types": ["some.Other"]})
    with pytest.raises(UntrustedArtifact):
        load(other, vdir, "sklearn")


def test_sklearn_joblib_needs_trust(tmp_path: Path, x: np.ndarray) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    features, y = build.iris()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = LogisticRegression(max_iter=500).fit(features, names)
    vdir = version_dir(tmp_path)
    joblib.dump(model, vdir / "model.joblib")
    assert detect_runtime(vdir) == "sklearn"
    with pytest.raises(UntrustedArtifact, match="trusted: true"):
        load(ModelSpec(name="m"), vdir, "sklearn")
    declared = (TensorSpec("features", "FP32", (4,)),)
    rt = load(ModelSpec(name="m", trusted=True, inputs=declared), vdir, "sklearn")
    inputs, outputs = rt.signature()
    assert dicts(inputs) == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert outputs[0] == TensorSpec("predict", "BYTES", (-1,))
    got = rt.infer({"features": x}, outputs=["predict"])
    assert list(got) == ["predict"]
    assert got["predict"].dtype == object
    assert got["predict"].tolist() == [s.encode() for s in model.predict(x)]


def test_sklearn_regressor_has_only_predict(tmp_path: Path, x: np.ndarray) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    features, y = build.iris()
    model = LinearRegression().fit(features, y.astype(np.float64))
    vdir = version_dir(tmp_path)
    joblib.dump(model, vdir / "model.pkl")
    rt = load(ModelSpec(name="m", trusted=True), vdir, "sklearn")
    assert dicts(rt.signature()[1]) == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    np.testing.assert_array_equal(rt.infer({"input": x})["predict"], model.predict(x))
    # An estimator handed over in Python (no file) gets the same treatment.
    from inferd.runtimes.sklearn import SklearnRuntime

    direct = SklearnRuntime.from_estimator(ModelSpec(name="m"), model)
    assert direct.signature() == rt.signature()
    np.testing.assert_array_equal(direct.infer({"input": x})["predict"], model.predict(x))


# ---------------------------------------------------------------- xgboost / lightgbm


def test_xgboost_matches_booster(repo: Path, tmp_path: Path, x: np.ndarray) -> None:
    import xgboost

    vdir = repo / "iris_xgboost" / "1"
    rt = load(spec_of(repo, "iris_xgboost"), vdir)
    assert dicts(rt.signature()[0]) == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert dicts(rt.signature()[1]) == [{"name": "predict", "datatype": "FP32", "shape": [-1, 3]}]
    booster = xgboost.Booster(model_file=str(vdir / "model.json"))
    expected = booster.inplace_predict(x)
    np.testing.assert_array_equal(rt.infer({"input": x})["predict"], expected)
    ubj = version_dir(tmp_path)
    booster.save_model(str(ubj / "model.ubj"))
    assert detect_runtime(ubj) == "xgboost"
    np.testing.assert_array_equal(
        load(ModelSpec(name="m"), ubj).infer({"input": x})["predict"], expected
    )


def test_xgboost_corrupt_file_reason_is_short(tmp_path: Path) -> None:
    vdir = version_dir(tmp_path)
    (vdir / "model.json").write_text("garbage")
    with pytest.raises(ModelLoadError, match="Invalid model format") as info:
        load(ModelSpec(name="m"), vdir, "xgboost")
    assert "\n" not in info.value.message and str(tmp_path) not in info.value.message


def test_lightgbm_matches_booster(repo: Path, x: np.ndarray) -> None:
    import lightgbm

    vdir = repo / "iris_lightgbm" / "1"
    rt = load(spec_of(repo, "iris_lightgbm"), vdir)
    assert dicts(rt.signature()[0]) == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert dicts(rt.signature()[1]) == [{"name": "predict", "datatype": "FP64", "shape": [-1, 3]}]
    booster = lightgbm.Booster(model_file=str(vdir / "model.txt"))
    got = rt.infer({"input": x}, outputs=["predict"])["predict"]
    np.testing.assert_allclose(got, booster.predict(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        rt.infer({"input": x.astype(np.float64)})["predict"], got, atol=1e-12
    )


# ---------------------------------------------------------------- torch


def test_torchscript_matches_module(repo: Path, x: np.ndarray) -> None:
    import torch

    vdir = repo / "mlp_torch" / "1"
    spec = spec_of(repo, "mlp_torch")
    rt = load(spec, vdir)
    assert rt.platform == "pytorch_torchscript"
    assert dicts(rt.signature()[0]) == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}]
    assert dicts(rt.signature()[1]) == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 3]}]
    module = torch.jit.load(str(vdir / "model.pt"), map_location="cpu")
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(rt.infer({"INPUT__0": x})["OUTPUT__0"], expected)


def test_torch_export_and_tuple_outputs(tmp_path: Path, x: np.ndarray) -> None:
    import torch

    class Two(torch.nn.Module):
        def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a * 2, a.sum(dim=1).to(torch.int64)

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(Two(), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    vdir = version_dir(tmp_path)
    torch.export.save(program, str(vdir / "model.pt2"))
    assert detect_runtime(vdir) == "torch"
    spec = ModelSpec(name="m", max_batch_size=8, inputs=(TensorSpec("a", "FP32", (4,)),))
    rt = load(spec, vdir)
    assert rt.platform == "pytorch_exported"
    assert dicts(rt.signature()[1]) == [
        {"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "OUTPUT__1", "datatype": "INT64", "shape": [-1]},
    ]
    got = rt.infer({"a": x}, outputs=["OUTPUT__1"])
    assert list(got) == ["OUTPUT__1"]
    np.testing.assert_array_equal(got["OUTPUT__1"], x.sum(axis=1).astype(np.int64))
    np.testing.assert_array_equal(rt.infer({"a": x})["OUTPUT__0"], x * 2)


def test_torch_refuses_missing_inputs_and_pickles(repo: Path, tmp_path: Path) -> None:
    import torch

    with pytest.raises(ModelLoadError, match="inputs"):
        load(ModelSpec(name="mlp_torch"), repo / "mlp_torch" / "1", "torch")
    wrong = ModelSpec(name="m", inputs=(TensorSpec("x", "FP32", (1, 5)),))
    with pytest.raises(ModelLoadError, match="shapes cannot be multiplied"):
        load(wrong, repo / "mlp_torch" / "1", "torch")
    vdir = version_dir(tmp_path)
    torch.save(torch.nn.Linear(4, 3), vdir / "model.pt")
    spec = ModelSpec(name="m", inputs=(TensorSpec("x", "FP32", (1, 4)),))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load(spec, vdir, "torch")


# ---------------------------------------------------------------- python


def test_python_simple_string(repo: Path) -> None:
    rt = load(spec_of(repo, "simple_string"), repo / "simple_string" / "1")
    inputs, outputs = rt.signature()
    assert [(t.name, t.datatype, t.shape) for t in inputs + outputs] == [
        (n, "BYTES", (-1, 16)) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")
    ]
    a = np.arange(16).reshape(1, 16)
    b = np.full((1, 16), 7)
    as_bytes = np.vectorize(lambda v: str(v).encode(), otypes=[object])
    got = rt.infer({"INPUT0": as_bytes(a), "INPUT1": as_bytes(b)})
    assert got["OUTPUT0"].dtype == object and got["OUTPUT0"].shape == (1, 16)
    assert got["OUTPUT0"].tolist() == as_bytes(a + b).tolist()
    assert got["OUTPUT1"].tolist() == as_bytes(a - b).tolist()
    rt.unload()


PY_SPEC = ModelSpec(
    name="m",
    parameters={"scale": 3},
    inputs=(TensorSpec("x", "INT32", (-1,)),),
    outputs=(TensorSpec("y", "INT32", (-1,)), TensorSpec("z", "FP32", (-1,))),
)


def test_python_context_unload_and_missing_output(tmp_path: Path) -> None:
    vdir = version_dir(tmp_path)
    # model.py in the model directory (the version directory's parent) is found too.
    (vdir.parent / "model.py").write_text(
        "EVENTS = []\n"
        "class Model:\n"
        "    def load(self, context):\n"
        "        self.scale = context.parameters['scale']\n"
        "        EVENTS.append(('load', context.name, context.version))\n"
        "    def infer(self, inputs, parameters):\n"
        "        return {'y': (inputs['x'] * self.scale).tolist()}\n"
        "    def unload(self):\n"
        "        EVENTS.append(('unload',))\n"
    )
    rt = load(PY_SPEC, vdir, "python")
    got = rt.infer({"x": np.array([1, 2], dtype=np.int32)}, outputs=["y"])
    np.testing.assert_array_equal(got["y"], np.array([3, 6], dtype=np.int32))
    assert got["y"].dtype == np.int32
    with pytest.raises(ModelExecutionError, match="'z'"):
        rt.infer({"x": np.array([1], dtype=np.int32)})
    module = sys.modules[type(rt._model).__module__]  # type: ignore[attr-defined]
    rt.unload()
    assert module.EVENTS == [("load", "m", "1"), ("unload",)]


def test_python_refusals(tmp_path: Path) -> None:
    vdir = version_dir(tmp_path)
    (vdir / "model.py").write_text("class NotModel:\n    pass\n")
    assert detect_runtime(vdir) == "python"
    with pytest.raises(ModelLoadError, match="'Model'"):
        load(PY_SPEC, vdir, "python")
    with pytest.raises(ModelLoadError, match="inputs"):
        load(ModelSpec(name="m"), vdir, "python")
    (vdir / "model.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ModelLoadError, match="boom"):
        load(PY_SPEC, vdir, "python")


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("model", "runtime"),
    [
        ("iris_onnx", "onnx"),
        ("iris_sklearn", "sklearn"),
        ("iris_xgboost", "xgboost"),
        ("iris_lightgbm", "lightgbm"),
        ("mlp_torch", "torch"),
        ("simple", "onnx"),
        ("simple_string", "python"),
    ],
)
def test_detect_runtime_on_examples(repo: Path, model: str, runtime: str) -> None:
    assert detect_runtime(repo / model / "1") == runtime
    spec = spec_of(repo, model)
    assert spec.runtime in (None, runtime)


def test_build_is_idempotent(repo: Path) -> None:
    before = (repo / "simple" / "1" / "model.onnx").stat().st_mtime_ns
    assert {what for _, what in build.build(repo)} == {"kept"}
    assert (repo / "simple" / "1" / "model.onnx").stat().st_mtime_ns == before
