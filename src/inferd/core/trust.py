"""Settings that loosen a load-time safety check, and the rules for who may set them.

A model's settings come from two kinds of source. The model repository folder an operator serves
(`model.yaml`) is the operator's own word and is honoured as written. Everything that arrives
through the management API — upload and import `meta`, deployment `config` — is written by users:
a setting there that loosens a check taken while the model is *loaded* (before any other check can
stop what the file does) is accepted only for a model whose owner an admin marked trusted, and
refused with a 422 naming the field otherwise. Loading is where an artifact runs code if it can,
so these rules are applied before a worker ever opens the file, and again when a stored
deployment is turned into a spec (an owner's trust can be withdrawn after the config was written).

A skops allow-list is narrower still: it never admits a callable (a function, a builtin, anything
from a module that runs commands or code) unless an admin names it, one by one. Trusting an owner
lets their files use *data classes* (scikit-learn estimators, numpy and scipy types) that skops does
not trust by default; it does not hand them `posix.system`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from inferd.core.errors import InvalidInput, Unprocessable

#: Model parameters that loosen a load-time safety check, and what each one loosens. The list is
#: the single place the control plane consults: a parameter that a runtime starts honouring and
#: that weakens what loading may do belongs here.
LOOSENING_PARAMETERS: Mapping[str, str] = {
    "trusted_types": "admits types skops does not trust by default when the file is loaded",
    "trust_remote_code": "runs Python code shipped with a checkpoint",
    "weights_only": "lets torch unpickle arbitrary objects",
    "allow_pickle": "lets numpy unpickle arbitrary objects",
    "allow_code": "runs code shipped with the model",
}

#: Runtimes that execute code from the artifact itself (`model.py`): choosing one for an artifact
#: is the same as uploading code, so it needs a trusted owner too.
CODE_RUNTIMES = frozenset({"python"})

#: Packages whose *classes* are data holders a fitted model is made of. An owner an admin marked
#: trusted may name (or let the loader accept) classes from these; never functions, and nothing
#: from any other package.
DATA_PACKAGES = frozenset({"sklearn", "numpy", "scipy", "xgboost", "lightgbm", "skops", "imblearn"})

#: Builtin and standard-library types that hold data and run nothing when built.
SAFE_STDLIB_TYPES = frozenset(
    {
        *(
            f"builtins.{t}"
            for t in (
                "int",
                "float",
                "complex",
                "bool",
                "str",
                "bytes",
                "bytearray",
                "list",
                "tuple",
                "dict",
                "set",
                "frozenset",
                "slice",
                "range",
                "NoneType",
            )
        ),
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.Counter",
        "collections.deque",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "decimal.Decimal",
        "fractions.Fraction",
    }
)

#: Modules whose members run commands or code, import modules, or reach files and the network.
#: Their names are refused in an allow-list from anyone but an admin, whatever they look like.
CODE_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "builtins", "importlib", "pickle", "_pickle",
        "marshal", "shutil", "sys", "socket", "ctypes", "runpy", "code", "codeop", "pty",
        "webbrowser", "multiprocessing", "asyncio", "threading", "operator", "functools",
        "types", "inspect", "io", "_io", "pathlib", "tempfile", "urllib", "http", "ftplib",
        "smtplib", "joblib", "dill", "cloudpickle", "torch", "timeit", "pdb", "bdb", "trace",
        "ensurepip", "pip", "setuptools", "distutils", "gc", "signal", "resource", "select",
        "zipimport", "pkgutil", "shelve", "dbm", "sqlite3", "ssl", "eval", "exec",
    }
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

#: numpy's and scipy's data classes with lower-case names (scalar types, dtype, ndarray).
_LOWERCASE_DATA_CLASSES = frozenset(
    {
        "numpy.dtype", "numpy.ndarray", "numpy.generic", "numpy.bool_", "numpy.bool",
        *(f"numpy.{k}{n}" for k, ns in (("int", (8, 16, 32, 64)), ("uint", (8, 16, 32, 64)),
                                        ("float", (16, 32, 64)), ("complex", (64, 128)))
          for n in ns),
        "numpy.str_", "numpy.bytes_", "numpy.datetime64", "numpy.timedelta64",
        "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType", "numpy.dtypes.Int64DType",
    }
)  # fmt: skip


#: Parts of a dotted name that mark a class of a data package which opens files, processes or
#: connections when built (`numpy.memmap(path, mode="w+")` creates a file; `scipy.io` writers;
#: joblib's pools): not data, whatever the package.
_RISKY_PARTS = ("io", "_io", "datasets", "externals", "testing", "_datasource", "npyio",
                "_npyio_impl", "format", "parallel", "_joblib", "memmap", "_memmap")  # fmt: skip
_RISKY_WORDS = ("memmap", "datasource", "file", "pool", "subprocess", "thread", "popen", "loader",
                "socket", "reader", "writer", "npz")  # fmt: skip


def touches_files_or_processes(type_name: str) -> bool:
    """Whether a data package's type name looks like one that reaches files or processes."""
    parts = type_name.split(".")
    if any(p in _RISKY_PARTS for p in parts[1:-1]):
        return True
    last = parts[-1].lower()
    return any(w in last for w in _RISKY_WORDS)


def root_module(type_name: str) -> str:
    """`sklearn.tree._tree.Tree` → `sklearn`."""
    return type_name.split(".", 1)[0]


def is_code_name(type_name: str) -> bool:
    """Whether a type name points into a module that runs commands or code (always refused from
    anyone but an admin), or is not a dotted Python name at all."""
    if type_name in SAFE_STDLIB_TYPES:
        return False
    if not _NAME.match(type_name):
        return True
    root = root_module(type_name)
    return root in CODE_MODULES or root.lstrip("_") in CODE_MODULES


def looks_like_data_class(type_name: str) -> bool:
    """A name a trusted owner may put in an allow-list without an admin: a safe stdlib type, or a
    class of a data package (classes are CapWords by convention; numpy's lower-case scalar types
    are listed). Functions (`numpy.load`, `sklearn.utils.deprecated`) do not qualify: without
    importing the module a function cannot be told from a class except by its name, and a wrong
    guess must fall on the side of asking an admin."""
    if type_name in SAFE_STDLIB_TYPES or type_name in _LOWERCASE_DATA_CLASSES:
        return True
    if is_code_name(type_name) or root_module(type_name) not in DATA_PACKAGES:
        return False
    if touches_files_or_processes(type_name):
        return False
    last = type_name.rsplit(".", 1)[-1].lstrip("_")
    return bool(last) and last[0].isupper()


def _type_list(parameters: Mapping[str, Any], key: str, field: str) -> list[str]:
    value = parameters.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InvalidInput(f"{field}.{key}: must be a list of type names")
    return list(value)


def check_loosening(
    parameters: Any,
    *,
    field: str,
    owner_trusted: bool,
    actor_admin: bool,
    runtime: str | None = None,
    runtime_field: str = "runtime",
) -> None:
    """Refuse (Unprocessable → 422, naming the field) settings from the management API that loosen
    a load-time check, unless the model's owner is trusted; refuse callables in a skops allow-list
    unless the caller is an admin. `field` is where the parameters sit in the request
    (`parameters`, `config.parameters`)."""
    if runtime is not None and runtime in CODE_RUNTIMES and not owner_trusted:
        raise Unprocessable(
            f"{runtime_field}: the '{runtime}' runtime runs code from the model's files; an admin "
            "must mark the owner trusted first"
        )
    if not isinstance(parameters, Mapping):
        return  # the caller's own validation names the wrong type
    loosening = [k for k in parameters if k in LOOSENING_PARAMETERS]
    if not loosening:
        return
    if not owner_trusted:
        key = sorted(loosening)[0]
        raise Unprocessable(
            f"{field}.{key}: {LOOSENING_PARAMETERS[key]}; only models of an owner an admin marked "
            "trusted may set it"
        )
    names = _type_list(parameters, "trusted_types", field)  # named one by one, never a pattern
    if actor_admin:
        return
    for name in names:
        if not looks_like_data_class(name):
            raise Unprocessable(
                f"{field}.trusted_types: '{name[:128]}' may be a function or a type that runs "
                "code; only an admin can allow it, by name"
            )
    for key in loosening:
        if key != "trusted_types":
            raise Unprocessable(
                f"{field}.{key}: {LOOSENING_PARAMETERS[key]}; only an admin can set it"
            )


def strip_loosening(parameters: Mapping[str, Any], owner_trusted: bool) -> dict[str, Any]:
    """The parameters a spec built from the registry may carry: every loosening setting dropped
    when the owner is not (or no longer) trusted."""
    if owner_trusted:
        return dict(parameters)
    return {k: v for k, v in parameters.items() if k not in LOOSENING_PARAMETERS}


def with_operator_types(parameters: Mapping[str, Any], types: list[str]) -> dict[str, Any]:
    """Parameters with the operator's server-wide skops allow-list (settings) added: classes every
    uploaded model may use. They come from the operator, so they need no trusted owner."""
    out = dict(parameters)
    if types:
        listed = out.get("trusted_types")
        own = listed if isinstance(listed, list) else []
        out["trusted_types"] = [*own, *(t for t in types if t not in own)]
    return out
