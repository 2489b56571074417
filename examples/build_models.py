"""Build the example model repository's binary artifacts, with no downloads and fixed seeds.

    python examples/build_models.py [--out examples/models] [--force]

Only binary artifacts are generated (and git-ignored); `model.yaml` and `model.py` files are
source files checked in under `examples/models/`. With `--out` elsewhere, those source files
are copied there too, so the result is a complete model repository. Artifacts already present
are kept unless `--force`.

The repository:
- `iris_onnx`     LogisticRegression via skl2onnx (zipmap off). No model.yaml on purpose: the
                  runtime is detected from `model.onnx` and the signature read from the file.
- `iris_sklearn`  RandomForestClassifier(n_estimators=10) saved with skops.
- `iris_xgboost`  XGBClassifier (multi:softprob), native JSON.
- `iris_lightgbm` LightGBM multiclass, native text.
- `mlp_torch`     TorchScript MLP 4->16->3 (trained briefly on iris).
- `simple`        Triton's classic "simple" (INT32 add/sub) built with onnx.helper.
- `simple_string` Triton's "simple_string" as a python model (model.py, no artifact).
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
HERE = Path(__file__).resolve().parent / "models"


def iris() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled iris data: FP32 features [150, 4], INT64 labels [150]."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)


def build_iris_onnx(path: Path) -> None:
    """LogisticRegression -> ONNX: `input` FP32 [-1,4] -> `label` INT64, `probabilities` FP32."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = iris()
    model = LogisticRegression(max_iter=1000, random_state=SEED).fit(x, y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    path.write_bytes(onx.SerializeToString())


def build_iris_sklearn(path: Path) -> None:
    """RandomForestClassifier(n_estimators=10) saved with skops (data only, no pickle)."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    x, y = iris()
    model = RandomForestClassifier(n_estimators=10, random_state=SEED, n_jobs=1).fit(x, y)
    sio.dump(model, path)


def build_iris_xgboost(path: Path) -> None:
    """XGBClassifier multi:softprob, saved with the booster's native JSON writer."""
    import xgboost

    x, y = iris()
    model = xgboost.XGBClassifier(
        n_estimators=20, max_depth=3, objective="multi:softprob", random_state=SEED, n_jobs=1
    ).fit(x, y)
    model.get_booster().save_model(str(path))


def build_iris_lightgbm(path: Path) -> None:
    """LightGBM multiclass booster in the native text format."""
    import lightgbm

    x, y = iris()
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "seed": SEED,
        "deterministic": True,
        "num_threads": 1,
        "verbose": -1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=20)
    booster.save_model(str(path))


def mlp_module() -> Any:
    """A 4->16->3 MLP trained for a few steps on iris (fixed seed), in eval mode."""
    import torch

    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = iris()
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
    return model.eval()


def build_mlp_torch(path: Path) -> None:
    """The MLP as TorchScript: INPUT__0 FP32 [-1,4] -> OUTPUT__0 FP32 [-1,3] (logits)."""
    import torch

    torch.jit.script(mlp_module()).save(str(path))


def build_simple(path: Path) -> None:
    """Triton's "simple": OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [-1,16]."""
    from onnx import TensorProto, helper

    def io(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [io("INPUT0"), io("INPUT1")],
        [io("OUTPUT0"), io("OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by any onnxruntime from 1.10 on
    path.write_bytes(model.SerializeToString())


#: artifact path in the repository -> builder.
ARTIFACTS: dict[str, Callable[[Path], None]] = {
    "iris_onnx/1/model.onnx": build_iris_onnx,
    "iris_sklearn/1/model.skops": build_iris_sklearn,
    "iris_xgboost/1/model.json": build_iris_xgboost,
    "iris_lightgbm/1/model.txt": build_iris_lightgbm,
    "mlp_torch/1/model.pt": build_mlp_torch,
    "simple/1/model.onnx": build_simple,
}

#: checked-in source files, copied when building into another directory.
SOURCES = (
    "iris_sklearn/model.yaml",
    "iris_xgboost/model.yaml",
    "iris_lightgbm/model.yaml",
    "mlp_torch/model.yaml",
    "simple/model.yaml",
    "simple_string/model.yaml",
    "simple_string/1/model.py",
)


def build(out: Path, force: bool = False) -> list[tuple[str, str]]:
    """Build into `out`; returns (relative path, what happened) for every file."""
    report = []
    if out.resolve() != HERE:
        for rel in SOURCES:
            target = out / rel
            if target.exists() and not force:
                report.append((rel, "kept"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / rel, target)
            report.append((rel, "copied"))
    for rel, builder in ARTIFACTS.items():
        target = out / rel
        if target.exists() and not force:
            report.append((rel, "kept"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # build beside the version folder (hidden, so never served), then move into place:
        # an interrupted build leaves no half-written artifact where the server looks
        staging = target.parent.parent / f".building-{target.parent.name}"
        staging.mkdir(exist_ok=True)
        tmp = staging / target.name
        builder(tmp)
        tmp.replace(target)
        staging.rmdir()
        report.append((rel, f"built ({target.stat().st_size:,} bytes)"))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=HERE, help="model repository directory")
    parser.add_argument("--force", action="store_true", help="rebuild existing artifacts")
    args = parser.parse_args(argv)
    for rel, what in build(args.out, force=args.force):
        print(f"{what:>24}  {args.out / rel}")


if __name__ == "__main__":
    main()
