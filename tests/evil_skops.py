"""skops files whose object tree calls a function while it is being loaded (for security tests).

skops' `ConstructorFromReduceNode` builds an object as `module.name(*args)`; naming `posix.system`
or `builtins.exec` there turns "load this file" into "run this command" once the type is trusted.
The payload of each file creates a canary file, so a test can tell whether it ran.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import skops.io as sio


def _call(module: str, name: str, arg: str) -> bytes:
    args = json.loads(_schema(sio.dumps((arg,))))
    version = {k: args.pop(k) for k in ("protocol", "_skops_version")}
    evil = {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": args, **version}  # fmt: skip
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("schema.json", json.dumps(evil))
    return out.getvalue()


def _schema(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read("schema.json").decode()


def system_call(canary: Path, module: str = "posix") -> bytes:
    """A skops file that runs `touch <canary>` through `<module>.system` when loaded."""
    return _call(module, "system", f"touch {canary}")


def exec_call(canary: Path) -> bytes:
    """A skops file that runs Python (`builtins.exec`) creating `canary` when loaded."""
    return _call("builtins", "exec", f"open({str(canary)!r}, 'w').close()")


def type_names(data: bytes) -> list[str]:
    """The types skops would have to be told to trust before loading `data`."""
    return list(sio.get_untrusted_types(data=data))
