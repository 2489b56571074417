"""Who may loosen a load-time safety check (core.trust), and the skops loader's own last line:
a trusted owner's file may use data classes, never a callable it was not told about by name."""

from __future__ import annotations

import datetime
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from inferd.core.errors import InvalidInput, Unprocessable, UntrustedArtifact
from inferd.core.spec import ModelSpec
from inferd.core.trust import (
    LOOSENING_PARAMETERS,
    check_loosening,
    looks_like_data_class,
    strip_loosening,
    with_operator_types,
)
from inferd.runtimes.sklearn import SklearnRuntime, is_data_class
from tests.evil_skops import exec_call, system_call


def _check(params: object, trusted: bool, admin: bool, runtime: str | None = None) -> None:
    check_loosening(params, field="parameters", owner_trusted=trusted, actor_admin=admin,
                    runtime=runtime)  # fmt: skip


@pytest.mark.parametrize("key", sorted(LOOSENING_PARAMETERS))
@pytest.mark.parametrize("admin", [False, True])
def test_untrusted_owner_cannot_loosen_anything(key: str, admin: bool) -> None:
    value = ["sklearn.tree._tree.Tree"] if key == "trusted_types" else True
    with pytest.raises(Unprocessable, match=rf"^parameters\.{key}: .*trusted"):
        _check({key: value, "num_threads": 2}, trusted=False, admin=admin)


def test_settings_that_loosen_nothing_pass_for_anyone() -> None:
    _check({"num_threads": 2, "task": "x", "ignore_auto_map": True}, trusted=False, admin=False)
    _check("not a dict", trusted=False, admin=False)  # the caller's own validation names it


@pytest.mark.parametrize(
    "name", ["posix.system", "os.system", "builtins.exec", "builtins.eval", "subprocess.Popen",
             "importlib.import_module", "pickle.loads", "operator.attrgetter", "numpy.load",
             "sklearn.utils.deprecated", "numpy.memmap", "scipy.io.FortranFile", "__builtin__.eval",
             "no dots", "mystery.Module"],
)  # fmt: skip
def test_trusted_member_cannot_name_a_callable_but_an_admin_can(name: str) -> None:
    with pytest.raises(Unprocessable, match=r"^parameters\.trusted_types: .*only an admin"):
        _check({"trusted_types": ["sklearn.tree._tree.Tree", name]}, trusted=True, admin=False)
    _check({"trusted_types": [name]}, trusted=True, admin=True)


def test_trusted_member_may_name_data_classes() -> None:
    _check({"trusted_types": ["sklearn.tree._tree.Tree", "numpy.float64", "builtins.int",
                              "datetime.timedelta", "scipy.sparse._csr.CsrMatrix"]},
           trusted=True, admin=False)  # fmt: skip


def test_other_loosening_settings_need_an_admin_even_for_a_trusted_owner() -> None:
    with pytest.raises(Unprocessable, match=r"^parameters\.trust_remote_code: .*admin"):
        _check({"trust_remote_code": True}, trusted=True, admin=False)
    _check({"trust_remote_code": True}, trusted=True, admin=True)


def test_allow_list_must_be_names() -> None:
    with pytest.raises(InvalidInput, match=r"^parameters\.trusted_types: must be a list"):
        _check({"trusted_types": "posix.system"}, trusted=True, admin=True)


def test_code_runtime_needs_a_trusted_owner() -> None:
    with pytest.raises(Unprocessable, match=r"^runtime: .*'python' runtime runs code"):
        _check({}, trusted=False, admin=True, runtime="python")
    _check({}, trusted=True, admin=False, runtime="python")


def test_strip_and_operator_types() -> None:
    params = {"trusted_types": ["posix.system"], "weights_only": False, "num_threads": 1}
    assert strip_loosening(params, owner_trusted=False) == {"num_threads": 1}
    assert strip_loosening(params, owner_trusted=True) == params
    merged = with_operator_types({"trusted_types": ["a.B"]}, ["sklearn.tree._tree.Tree", "a.B"])
    assert merged == {"trusted_types": ["a.B", "sklearn.tree._tree.Tree"]}
    assert with_operator_types({}, []) == {}


def test_static_and_resolved_classification_agree_on_the_examples() -> None:
    for name in ("sklearn.tree._tree.Tree", "numpy.float64", "builtins.int"):
        assert looks_like_data_class(name) and is_data_class(name), name
    for name in (
        "posix.system",
        "builtins.exec",
        "numpy.load",
        "numpy.memmap",
        "scipy.io.netcdf_file",
        "operator.attrgetter",
        "sklearn.nonexistent.Thing",
    ):
        assert not is_data_class(name), name  # fmt: skip


# ---- the loader ------------------------------------------------------------------------------


def _runtime(tmp_path: Path, data: bytes, **spec: object) -> SklearnRuntime:
    version = tmp_path / "1"
    version.mkdir(parents=True)
    (version / "model.skops").write_bytes(data)
    return SklearnRuntime(ModelSpec(name="m", **spec), "1", version)  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [system_call, exec_call])
def test_a_trusted_model_never_runs_a_callable_it_did_not_name(
    tmp_path: Path, build: object
) -> None:
    canary = tmp_path / "canary"
    runtime = _runtime(tmp_path, build(canary), trusted=True)  # type: ignore[operator]
    with pytest.raises(UntrustedArtifact, match="trusted_types"):
        runtime.load()
    assert not canary.exists()


def test_a_trusted_model_may_use_data_classes(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    clf = DecisionTreeClassifier(max_depth=2).fit(x, y)
    clf.extra_ = OrderedDict(when=datetime.timedelta(days=1))  # types skops does not trust
    data = sio.dumps(clf)
    with pytest.raises(UntrustedArtifact, match=r"sklearn\.tree\._tree\.Tree"):
        _runtime(tmp_path / "a", data).load()  # not trusted: skops' own list only
    runtime = _runtime(tmp_path / "b", data, trusted=True)
    runtime.load()
    out = runtime.infer({"input": x[:3].astype(np.float32)}, None, None)
    assert out["predict"].tolist() == clf.predict(x[:3]).tolist()
