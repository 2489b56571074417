"""The server's side of worker isolation: for each worker process it starts, who the worker runs
as, the environment it gets, its private scratch and shared-memory folders, and the plan the
worker applies to itself before any model code runs (`sandbox.enter`).

Model code runs in workers: a trusted owner's pickle or `model.py`, an operator's `model.py`. So
a worker gets none of the server's secrets: its environment is built from an allow-list (never
the server's INFERD_* configuration, cloud or database credentials), it runs as an unprivileged
user when the server runs as root, it cannot see the registry database or the data dir, and a
model that must run without network gets none (see docs/model-repository.md, "Worker
isolation").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.core.errors import ModelLoadError
from inferd.core.scaling import Resources
from inferd.workers import limits

log = logging.getLogger("inferd.workers")

#: Variables a worker gets from the server's environment, by exact name: what Python, the C
#: library and the runtimes' frameworks read to run (locale, paths, offline switches, caches).
ALLOWED_ENV = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED",
    "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONUTF8",
    "PYTHONWARNINGS", "PYTHONFAULTHANDLER", "PYTHONMALLOC", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
    "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "TOKENIZERS_PARALLELISM",
    "XDG_CACHE_HOME", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
    "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
})  # fmt: skip
#: ... and by prefix: locale categories, thread pools and math libraries, CUDA and its
#: libraries, the deep-learning frameworks' own switches.
ALLOWED_PREFIXES = ("LC_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "BLIS_", "CUDA_",
                    "CUBLAS_", "CUDNN_", "NCCL_", "PYTORCH_", "TORCH_", "TORCHINDUCTOR_",
                    "TRITON_", "ORT_", "VLLM_", "XLA_", "TF_")  # fmt: skip
#: Folders the server's own user writes its caches to (torch sets TORCHINDUCTOR_CACHE_DIR in the
#: server's environment once it compiled anything): a worker running as another user cannot
#: write there, so it gets none of them and its caches go to its scratch dir (HOME, TMPDIR).
SERVER_CACHES = ("XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
#: Never passed, whatever else allows it: the server's own configuration (database URL,
#: bootstrap key and password, JWT and S3 secrets) and anything named like a credential.
DENIED_PREFIXES = ("INFERD_",)
DENIED_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")


def allowed(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether the server's variable `name` may reach a worker. `extra` holds the operator's
    additions (`workers.env_allow`): names, or prefixes ending in `*`."""
    if name.startswith(DENIED_PREFIXES):
        return False
    if name in ALLOWED_ENV:
        return True
    for entry in extra:  # the operator named it: even a credential passes (documented)
        if name == entry or (entry.endswith("*") and name.startswith(entry[:-1])):
            return True
    if any(word in name.upper() for word in DENIED_WORDS):
        return False
    return name.startswith(ALLOWED_PREFIXES)


def worker_env(
    environ: Mapping[str, str],
    resources: Resources,
    cpus: list[int] | None,
    extra: Iterable[str] = (),
    scratch: Path | None = None,
    own_home: bool = False,
) -> dict[str, str]:
    """The environment of a worker process: the allowed part of the server's, its scratch dir
    as TMPDIR (and HOME, when it runs as another user: the server's home and caches are not its
    own), plus the version's resource settings."""
    extra = tuple(extra)
    env = {k: v for k, v in environ.items() if allowed(k, extra)}
    home = environ.get("HOME")
    if scratch is not None:
        env["TMPDIR"] = str(scratch)
        home = str(scratch) if own_home or home is None else home
    if own_home:
        for name in SERVER_CACHES:
            env.pop(name, None)
    if home is not None:
        env["HOME"] = home
    env.update(limits.resource_env(resources, cpus))
    return env


@dataclass
class Sandbox:
    """What one worker process is started with; its folders go when it exits."""

    env: dict[str, str]
    plan: dict[str, Any]
    scratch: Path
    shm: Path | None
    folders: list[Path] = field(default_factory=list)


class WorkerIsolation:
    """Prepares each worker's sandbox from the operator's settings (`workers.*`).

    `user`: who workers run as when the server runs as root ("" keeps root).
    `require_network_isolation`: refuse to load a model that must run without network when the
    kernel gives no network namespace. `env_allow`: the operator's additions to the environment
    allow-list.
    `scratch_dir`: where workers' private temp folders go (the system temp dir by default).
    `hide`: folders workers must not see even where their modes would let them in (the data
    dir: the database, every user's artifacts), apart from the model folder each one serves.
    """

    def __init__(
        self,
        user: str = "nobody",
        require_network_isolation: bool = False,
        env_allow: Iterable[str] = (),
        scratch_dir: Path | None = None,
        hide: Iterable[Path] = (),
    ) -> None:
        self.user = user
        self.hide = tuple(str(Path(p).expanduser().resolve()) for p in hide)
        self.require_network_isolation = require_network_isolation
        self.env_allow = tuple(env_allow)
        self.scratch_dir = scratch_dir
        self._run: Path | None = None
        self._live: dict[int, Sandbox] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self._noted: set[str] = set()

    def identity(self) -> tuple[int, int] | None:
        """(uid, gid) workers drop to, or None when they keep the server's user."""
        if not self.user or os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwuid(int(self.user)) if self.user.isdigit() else pwd.getpwnam(self.user)
        except (KeyError, ValueError):
            if self.user.isdigit():  # a bare uid without a passwd entry: its own group id
                return int(self.user), int(self.user)
            raise ModelLoadError(
                f"workers.user '{self.user}': no such user on this machine (model code is not "
                "run as root; name an existing unprivileged user, or '' to keep root)"
            ) from None
        if entry.pw_uid == 0:
            raise ModelLoadError(f"workers.user '{self.user}' is root; name an unprivileged user")
        return entry.pw_uid, entry.pw_gid

    def prepare(
        self, model_dir: Path, network: bool, resources: Resources, cpus: list[int] | None
    ) -> Sandbox:
        """Folders, environment and plan for a new worker serving the model in `model_dir`."""
        ids = self.identity()
        scratch = self._folder(self._run_dir(), "w-", ids)
        shm = None
        with contextlib.suppress(OSError):  # no /dev/shm: tensors travel over the socket
            shm = self._folder(Path("/dev/shm"), "inferd-w-", ids)
        env = worker_env(os.environ, resources, cpus, self.env_allow, scratch, ids is not None)
        plan: dict[str, Any] = {
            "network": network,
            "require_network_isolation": self.require_network_isolation,
            "model_dir": str(model_dir),
            "scratch": str(scratch),
            "shm": str(shm) if shm else None,
            "uid": ids[0] if ids else None,
            "gid": ids[1] if ids else None,
            "user": self.user,
            "hide": list(self.hide),
        }
        return Sandbox(env, plan, scratch, shm, [scratch, *([shm] if shm else [])])

    def _run_dir(self) -> Path:
        """This server's folder of worker scratch dirs: others may pass through (each worker to
        its own), not list it."""
        if self._run is None or not self._run.is_dir():
            root = self.scratch_dir or Path(tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            self._run = Path(tempfile.mkdtemp(prefix="inferd-workers-", dir=root))
            self._run.chmod(0o711)
        return self._run

    @staticmethod
    def _folder(parent: Path, prefix: str, ids: tuple[int, int] | None) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # 0700
        if ids is not None:
            try:
                os.chown(folder, *ids)
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return folder

    def started(self, proc: asyncio.subprocess.Process, sandbox: Sandbox) -> None:
        """Remove the worker's folders once it exits, however it ends."""
        self._live[proc.pid] = sandbox

        async def reap() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await proc.wait()
            self.release(proc.pid)

        task = asyncio.create_task(reap(), name=f"worker-{proc.pid}-reaper")
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    def release(self, pid: int) -> None:
        sandbox = self._live.pop(pid, None)
        if sandbox is not None:
            for folder in sandbox.folders:
                shutil.rmtree(folder, ignore_errors=True)
        if not self._live and self._run is not None:
            with contextlib.suppress(OSError):  # not empty: a worker is about to start
                self._run.rmdir()
                self._run = None

    def discard(self, sandbox: Sandbox) -> None:
        """Remove the folders of a sandbox whose worker never started."""
        for folder in sandbox.folders:
            shutil.rmtree(folder, ignore_errors=True)

    def note(self, notes: Iterable[str]) -> None:
        """Log what a worker could not isolate, once per server and reason."""
        for text in notes:
            if text not in self._noted:
                self._noted.add(text)
                log.warning("worker isolation: %s", text)

    def close(self) -> None:
        """Forget every worker (they were stopped) and remove what is left of their folders."""
        for task in list(self._reapers):
            task.cancel()
        for pid in list(self._live):
            self.release(pid)
