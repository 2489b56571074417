"""The built-in processors of pipelines: pre- and post-processing configured without code
(pure numpy). A processor step (`{"processor": "softmax", "config": {"axis": -1}}`) maps the
tensors it is given to the tensors it returns; `build(name, config, where)` checks the config
when the pipeline is saved or loaded and returns the function.

Unless said otherwise a processor works on the tensors named in `config.tensors` (default:
every tensor it gets) and passes the others through unchanged. The names, their configs and
what they return are listed in docs/pipelines.md ("Built-in processors"): validate, standardize,
normalize, impute, one_hot, label_encode, outliers, softmax, top_k, label_map, confidence,
format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from inferd.core.errors import InvalidInput

Tensors = dict[str, np.ndarray]
Processor = Callable[[Tensors], Tensors]


def _bad(where: str, message: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}")


def _known(config: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(config) - keys - {"tensors"})
    if unknown:
        raise _bad(where, f"unknown field(s): {', '.join(unknown)}")
    tensors = config.get("tensors")
    if tensors is not None and (
        not isinstance(tensors, list) or not all(isinstance(t, str) for t in tensors)
    ):
        raise _bad(f"{where}.tensors", "must be a list of tensor names")


def _numbers(value: Any, where: str, positive: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad(where, "must be a number or a list of numbers") from None
    if arr.ndim > 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise _bad(where, "must be a number or a list of numbers")
    if positive and np.any(arr <= 0):
        raise _bad(where, "must be > 0")
    return arr


def _rows(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad(where, "must be a list of rows of numbers") from None
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise _bad(where, "must be a list of at least 2 rows of numbers")
    return arr


def _classes(config: Mapping[str, Any], key: str, where: str) -> list[Any]:
    classes = config.get(key)
    if not isinstance(classes, list) or not classes:
        raise _bad(f"{where}.{key}", "must be a non-empty list")
    return classes


def _each(config: Mapping[str, Any], fn: Callable[[str, np.ndarray], Tensors]) -> Processor:
    """Apply `fn(name, array)` to the chosen tensors; its results replace or join them."""
    chosen = config.get("tensors")

    def run(tensors: Tensors) -> Tensors:
        out = dict(tensors)
        for name, arr in tensors.items():
            if chosen is None or name in chosen:
                out.update(fn(name, arr))
        if chosen is not None:
            missing = [t for t in chosen if t not in tensors]
            if missing:
                raise InvalidInput(f"no tensor '{missing[0]}' to process")
        return out

    return run


def _float(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise InvalidInput(f"tensor '{name}' is not numeric")
    return arr.astype(np.float32, copy=False) if arr.dtype.kind != "f" else arr


def _validate(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"rules"}, where)
    rules = config.get("rules")
    if not isinstance(rules, dict) or not rules:
        raise _bad(f"{where}.rules", "must map tensor names to rules")
    for tensor, rule in rules.items():
        if not isinstance(rule, dict) or set(rule) - {"min", "max", "enum", "required", "finite"}:
            raise _bad(f"{where}.rules.{tensor}", "takes min, max, enum, required, finite")
        for bound in ("min", "max"):
            if bound in rule:
                _numbers(rule[bound], f"{where}.rules.{tensor}.{bound}")
        if "enum" in rule and not isinstance(rule["enum"], list):
            raise _bad(f"{where}.rules.{tensor}.enum", "must be a list")

    def run(tensors: Tensors) -> Tensors:
        for tensor, rule in rules.items():
            arr = tensors.get(tensor)
            if arr is None:
                if rule.get("required", True):
                    raise InvalidInput(f"input '{tensor}' is required")
                continue
            if "enum" in rule:
                allowed = {x.encode() if isinstance(x, str) and arr.dtype == object else x
                           for x in rule["enum"]}  # fmt: skip
                bad = [x for x in arr.ravel().tolist() if x not in allowed]
                if bad:
                    raise InvalidInput(f"input '{tensor}': {bad[0]!r} is not one of "
                                       f"{rule['enum']}")  # fmt: skip
                continue
            values = _float(arr, tensor)
            if rule.get("finite", True) and not np.all(np.isfinite(values)):
                raise InvalidInput(f"input '{tensor}': values must be finite (no NaN or inf)")
            if "min" in rule and np.any(values < np.asarray(rule["min"])):
                raise InvalidInput(f"input '{tensor}': values below the minimum {rule['min']}")
            if "max" in rule and np.any(values > np.asarray(rule["max"])):
                raise InvalidInput(f"input '{tensor}': values above the maximum {rule['max']}")
        return tensors

    return run


def _standardize(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"mean", "std"}, where)
    mean = _numbers(config.get("mean", 0.0), f"{where}.mean")
    std = _numbers(config.get("std", 1.0), f"{where}.std", positive=True)
    return _each(config, lambda n, a: {n: ((_float(a, n) - mean) / std).astype(np.float32)})


def _normalize(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"min", "max"}, where)
    lo = _numbers(config.get("min"), f"{where}.min")
    hi = _numbers(config.get("max"), f"{where}.max")
    if np.any(hi <= lo):
        raise _bad(where, "every max must be greater than its min")
    return _each(config, lambda n, a: {n: ((_float(a, n) - lo) / (hi - lo)).astype(np.float32)})


def _impute(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"value", "strategy", "reference"}, where)
    if "value" in config:
        fill = _numbers(config["value"], f"{where}.value")
    else:
        strategy = config.get("strategy")
        if strategy not in ("mean", "median"):
            raise _bad(f"{where}.strategy", "must be mean or median (or give 'value')")
        ref = _rows(config.get("reference"), f"{where}.reference")
        fill = np.nanmean(ref, axis=0) if strategy == "mean" else np.nanmedian(ref, axis=0)

    def one(name: str, arr: np.ndarray) -> Tensors:
        x = np.array(_float(arr, name), dtype=np.float32)
        holes = np.isnan(x)
        if holes.any():
            x[holes] = np.broadcast_to(fill, x.shape)[holes]
        return {name: x}

    return _each(config, one)


def _one_hot(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"classes"}, where)
    classes = _classes(config, "classes", where)
    index = {c.encode() if isinstance(c, str) else c: i for i, c in enumerate(classes)}

    def one(name: str, arr: np.ndarray) -> Tensors:
        out = np.zeros((*arr.shape, len(classes)), dtype=np.float32)
        for pos, value in np.ndenumerate(arr):
            i = index.get(value)
            if i is None:
                raise InvalidInput(f"tensor '{name}': {value!r} is not one of {classes}")
            out[(*pos, i)] = 1.0
        return {name: out}

    return _each(config, one)


def _label_encode(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"classes"}, where)
    classes = _classes(config, "classes", where)
    index = {str(c).encode(): i for i, c in enumerate(classes)}

    def one(name: str, arr: np.ndarray) -> Tensors:
        out = np.empty(arr.shape, dtype=np.int64)
        for pos, value in np.ndenumerate(arr):
            key = value if isinstance(value, bytes) else str(value).encode()
            if key not in index:
                raise InvalidInput(f"tensor '{name}': {value!r} is not one of {classes}")
            out[pos] = index[key]
        return {name: out}

    return _each(config, one)


def _outliers(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"method", "reference", "threshold"}, where)
    method = config.get("method", "zscore")
    if method not in ("zscore", "iqr"):
        raise _bad(f"{where}.method", "must be zscore or iqr")
    ref = _rows(config.get("reference"), f"{where}.reference")
    threshold = float(_numbers(config.get("threshold", 3.0 if method == "zscore" else 1.5),
                               f"{where}.threshold", positive=True).ravel()[0])  # fmt: skip
    if method == "zscore":
        mean, std = ref.mean(axis=0), ref.std(axis=0)
        std = np.where(std > 0, std, 1.0)

        def flags(x: np.ndarray) -> np.ndarray:
            return np.asarray(np.abs((x - mean) / std) > threshold)
    else:
        q1, q3 = np.percentile(ref, 25, axis=0), np.percentile(ref, 75, axis=0)
        lo, hi = q1 - threshold * (q3 - q1), q3 + threshold * (q3 - q1)

        def flags(x: np.ndarray) -> np.ndarray:
            return np.asarray((x < lo) | (x > hi))

    def one(name: str, arr: np.ndarray) -> Tensors:
        x = _float(arr, name)
        f = flags(x)
        per_row = f.reshape(f.shape[0], -1).any(axis=1) if f.ndim > 1 else f
        return {f"{name}_outlier": per_row.astype(bool)}

    return _each(config, one)


def _softmax(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"axis"}, where)
    axis = config.get("axis", -1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise _bad(f"{where}.axis", "must be an integer")

    def one(name: str, arr: np.ndarray) -> Tensors:
        x = _float(arr, name).astype(np.float64)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return {name: (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)}

    return _each(config, one)


def _top_k(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"k", "labels"}, where)
    k = config.get("k", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise _bad(f"{where}.k", "must be an integer >= 1")
    labels = config.get("labels")
    if labels is not None:
        _classes(config, "labels", where)

    def one(name: str, arr: np.ndarray) -> Tensors:
        x = _float(arr, name)
        idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
        if x.ndim == 2:  # the usual [rows, classes]: plain indexing, not take_along_axis
            scores = x[np.arange(x.shape[0])[:, None], idx]
        else:
            scores = np.take_along_axis(x, idx, axis=-1)
        out = {f"{name}_indices": idx.astype(np.int64), f"{name}_scores": scores}
        if labels is not None:
            out[f"{name}_labels"] = _labelled(idx, labels)
        return out

    return _each(config, one)


def _labelled(idx: np.ndarray, labels: list[Any]) -> np.ndarray:
    out = np.empty(idx.shape, dtype=object)
    for pos, i in np.ndenumerate(idx):
        out[pos] = str(labels[i]).encode() if 0 <= i < len(labels) else str(i).encode()
    return out


def _label_map(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"labels"}, where)
    labels = _classes(config, "labels", where)

    def one(name: str, arr: np.ndarray) -> Tensors:
        if arr.dtype.kind not in "iu":
            raise InvalidInput(f"tensor '{name}' holds no class indices (integers)")
        return {name: _labelled(arr, labels)}

    return _each(config, one)


def _confidence(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, set(), where)

    def one(name: str, arr: np.ndarray) -> Tensors:
        p = _float(arr, name).astype(np.float64)
        safe = np.clip(p, 1e-12, 1.0)
        entropy = -(p * np.log(safe)).sum(axis=-1)
        return {f"{name}_confidence": p.max(axis=-1).astype(np.float32),
                f"{name}_entropy": entropy.astype(np.float32)}  # fmt: skip

    return _each(config, one)


def _format(config: Mapping[str, Any], where: str) -> Processor:
    _known(config, {"select", "rename", "nest"}, where)
    nest = config.get("nest", {})
    if not isinstance(nest, dict) or not all(
        isinstance(g, str) and isinstance(m, list) and all(isinstance(n, str) for n in m)
        for g, m in nest.items()
    ):
        raise _bad(f"{where}.nest", "must map group names to lists of tensor names")
    group_of = {n: g for g, members in nest.items() for n in members}
    select = config.get("select")
    if select is not None and (not isinstance(select, list) or not select):
        raise _bad(f"{where}.select", "must be a non-empty list of tensor names")
    rename = config.get("rename", {})
    if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
        raise _bad(f"{where}.rename", "must map tensor names to new names")

    def run(tensors: Tensors) -> Tensors:
        names = select if select is not None else list(tensors)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InvalidInput(f"no tensor '{missing[0]}' to select")
        out = {}
        for n in names:
            new = rename.get(n, n)
            out[f"{group_of[n]}.{new}" if n in group_of else new] = tensors[n]
        return out

    return run


BUILTIN: dict[str, Callable[[Mapping[str, Any], str], Processor]] = {
    "validate": _validate,
    "standardize": _standardize,
    "normalize": _normalize,
    "impute": _impute,
    "one_hot": _one_hot,
    "label_encode": _label_encode,
    "outliers": _outliers,
    "softmax": _softmax,
    "top_k": _top_k,
    "label_map": _label_map,
    "confidence": _confidence,
    "format": _format,
}


def build(name: str, config: Mapping[str, Any], where: str) -> Processor:
    """The processor `name` with `config` (checked: errors name `where` and the field)."""
    make = BUILTIN.get(name)
    if make is None:
        known = ", ".join(sorted(BUILTIN))
        raise _bad(f"{where}.processor", f"no built-in processor '{name}' (known: {known}); "
                   "a Python processor is a model step")  # fmt: skip
    return make(config, f"{where}.config")
