"""How each server under test is started, probed, checked and stopped.

Every server runs as one process tree pinned with ``taskset -c <server cpu>``, in its own process
group (so stopping it stops any child it forked), logging to ``bench/out/logs/<server>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
MAIN_PY = ROOT / ".venv" / "bin" / "python"

URLS = {"v2": "/v2/models/{m}/infer", "v1": "/v1/models/{m}:predict"}


@dataclass
class ServerSpec:
    """A server under test: its command line, where it listens and how it is configured."""

    name: str
    argv: list[str]
    port: int
    config: str
    protocols: tuple[str, ...] = ("v2",)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = BENCH
    python: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    check_outputs: bool = True
    unavailable: str | None = None
    #: Where the server's gRPC listener is (None: gRPC off).
    grpc_port: int | None = None

    def url(self, protocol: str, model: str) -> str:
        """The infer URL of ``model`` over ``protocol`` (``v2`` or ``v1``)."""
        return f"http://127.0.0.1:{self.port}" + URLS[protocol].format(m=model)


def package_versions(python: Path, names: list[str]) -> dict[str, str]:
    """``importlib.metadata`` versions of ``names`` as seen by interpreter ``python``."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    try:
        res = subprocess.run(
            [str(python), "-c", code, *names], capture_output=True, text=True, timeout=60
        )
        return dict(json.loads(res.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def describe_source(src: Path) -> str:
    """Identify an inferd source tree: ``git describe`` for this checkout's ``src/``, plus a
    content hash of its ``*.py`` files (which also identifies a copy)."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        digest.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
    ident = f"{src} (py sha256 {digest.hexdigest()[:12]})"
    if src.resolve() != (ROOT / "src").resolve():
        return ident
    try:
        res = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ident
    return f"{ident} @ {res.stdout.strip()}" if res.returncode == 0 else ident


def inferd_spec(
    models: Path, port: int, src: Path | None = None, grpc_port: int | None = None
) -> ServerSpec:
    """inferd's CLI ``serve`` command, with ``src`` (default: this checkout's) on PYTHONPATH.

    gRPC listens on ``grpc_port`` (default ``port + 1``, so that it never collides with another
    inferd on the default 8001 on a shared machine).
    """
    grpc_port = port + 1 if grpc_port is None else grpc_port
    argv = [str(MAIN_PY), "-m", "inferd.cli.main", "serve", "--model-repository", str(models)]
    argv += ["--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", str(grpc_port)]
    # a registry of its own per server: two trees side by side may differ in schema version
    data = ROOT / "bench" / "out" / "data" / f"inferd-{port}"
    shutil.rmtree(data, ignore_errors=True)
    env = {"PYTHONPATH": str((src or ROOT / "src").resolve()), "INFERD_DATA_DIR": str(data)}
    spec = ServerSpec("inferd", argv, port, "", ("v2", "v1"), env, python=MAIN_PY)
    spec.grpc_port = grpc_port
    try:
        help_text = subprocess.run(
            [*argv[:4], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        spec.unavailable = f"inferd serve --help failed: {exc}"
        return spec
    if help_text.returncode != 0:
        spec.unavailable = "inferd serve --help failed: " + help_text.stderr.strip()[-300:]
        return spec
    flags = []
    if "--no-access-log" in help_text.stdout:
        flags.append("--no-access-log")
    spec.argv += flags
    spec.config = (
        "defaults"
        + (" + " + " ".join(flags) if flags else "")
        + "; one server process, model replicas as inferd's defaults place them (their worker "
        "processes inherit the pin); mlp/model.yaml sets onnxruntime intra_op_threads"
    )
    spec.versions = package_versions(MAIN_PY, ["inferd", "onnxruntime", "scikit-learn", "uvicorn"])
    spec.versions["source"] = describe_source(Path(env["PYTHONPATH"]))
    return spec


def mlserver_spec(models: Path, port: int, parallel_workers: int = 0) -> ServerSpec:
    """Seldon MLServer: ``mlserver start`` on the generated repository, settings from env."""
    py = VENVS / "mlserver" / "bin" / "python"
    argv = [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(models)]
    env = {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(port + 1),
        "MLSERVER_METRICS_PORT": str(port + 2),
        "MLSERVER_PARALLEL_WORKERS": str(parallel_workers),
        "MLSERVER_DEBUG": "false",
        "PYTHONPATH": str(BENCH / "peers"),
    }
    workers = (
        "inference in the server process (parallel_workers=0)"
        if parallel_workers == 0
        else f"{parallel_workers} inference worker process(es) "
        f"(parallel_workers={parallel_workers})"
    )
    config = (
        f"one uvicorn process, {workers}; debug=false (no access log); metrics and gRPC "
        "servers on at their defaults; mlserver-sklearn for iris, bench/peers/mlserver_onnx.py "
        "for mlp"
    )
    cwd = BENCH / "out" / "run" / "mlserver"  # MLServer writes .metrics/.envs into its cwd
    spec = ServerSpec("mlserver", argv, port, config, ("v2",), env, cwd, py)
    spec.grpc_port = port + 1
    if not py.exists():
        spec.unavailable = f"{py} missing: run bench/setup.sh"
    else:
        spec.versions = package_versions(
            py, ["mlserver", "mlserver-sklearn", "onnxruntime", "scikit-learn", "uvicorn"]
        )
    return spec


def kserve_spec(models: Path, port: int, grpc: bool = False) -> ServerSpec:
    """KServe ``ModelServer`` with the custom models in ``bench/peers/kserve_server.py``.

    ``grpc``: also serve KServe's gRPC (``--enable_grpc true``) on ``port + 1``.
    """
    py = VENVS / "kserve" / "bin" / "python"
    argv = [str(py), str(BENCH / "peers" / "kserve_server.py"), "--model_dir", str(models)]
    argv += ["--http_port", str(port), "--grpc_port", str(port + 1), "--workers", "1"]
    on = "true" if grpc else "false"
    argv += ["--enable_grpc", on, "--enable_latency_logging", "false"]
    config = (
        f"--workers 1 --enable_grpc {on} --enable_latency_logging false; uvicorn access log "
        "and kserve.trace per-request timing logs off; custom kserve.Model classes "
        "(bench/peers/kserve_server.py)"
    )
    spec = ServerSpec("kserve", argv, port, config, ("v2", "v1"), {}, BENCH, py)
    spec.grpc_port = port + 1 if grpc else None
    if not py.exists():
        spec.unavailable = f"{py} missing: run bench/setup.sh"
    else:
        spec.versions = package_versions(
            py, ["kserve", "onnxruntime", "scikit-learn", "fastapi", "uvicorn"]
        )
    return spec


def raw_spec(port: int) -> ServerSpec:
    """Calibration: raw ASGI on uvicorn answering a fixed body, no model (loadgen ceiling)."""
    argv = [str(MAIN_PY), str(BENCH / "peers" / "raw_asgi.py"), "--port", str(port)]
    config = "raw ASGI, uvicorn+uvloop+httptools, no model call, no access log (calibration)"
    return ServerSpec("raw", argv, port, config, ("v2", "v1"), python=MAIN_PY, check_outputs=False)


def port_free(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:port."""
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def start(spec: ServerSpec, cpu: int | None, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start the server pinned to ``cpu`` in a new process group, logging to a file."""
    for port in {spec.port, spec.grpc_port or spec.port}:
        if not port_free(port):
            raise RuntimeError(f"port {port} is already in use")
    log_dir.mkdir(parents=True, exist_ok=True)
    spec.cwd.mkdir(parents=True, exist_ok=True)
    pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    log = (log_dir / f"{spec.name}.log").open("wb")
    return subprocess.Popen(
        [*pin, *spec.argv],
        cwd=spec.cwd,
        env={**os.environ, **spec.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _group_tasks(pgid: int) -> list[tuple[int, int]]:
    """(pid, tid) of every thread of every process in process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            out += [(int(entry.name), int(t.name)) for t in (entry / "task").iterdir()]
        except (OSError, ValueError, IndexError):
            continue
    return out


def enforce_pin(proc: subprocess.Popen[bytes], cpu: int | None) -> list[str]:
    """Move any thread of the server that left ``cpu`` back onto it; describe each one moved.

    ``taskset`` only sets the starting mask: a library may re-pin its own threads (onnxruntime's
    default intra-op pool pins one thread per physical core), which would let the server use the
    load generator's core.
    """
    if cpu is None:
        return []
    moved = []
    for pid, tid in _group_tasks(proc.pid):
        try:
            mask = os.sched_getaffinity(tid)
            if mask != {cpu}:
                os.sched_setaffinity(tid, {cpu})
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                moved.append(f"{comm} (tid {tid}) was on CPUs {sorted(mask)}")
        except OSError:
            continue
    return moved


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, urllib.error.URLError):
        return 0


def wait_ready(
    spec: ServerSpec, proc: subprocess.Popen[bytes], models: list[str], timeout: float = 180
) -> float:
    """Poll server and per-model readiness; returns seconds to ready, raises if it never is."""
    t0 = time.monotonic()
    base = f"http://127.0.0.1:{spec.port}"
    paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {proc.returncode} before it was ready")
        if all(_get(base + p) == 200 for p in paths):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise RuntimeError(f"{spec.name} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> int | None:
    """SIGINT the server's process group, then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def _flat(v: Any) -> list[Any]:
    return [x for item in v for x in _flat(item)] if isinstance(v, list) else [v]


def check(spec: ServerSpec, protocol: str, model: str, body: Path, expected: Path) -> str | None:
    """POST the body once; None if the answer matches the in-process reference, else why not."""
    req = urllib.request.Request(
        spec.url(protocol, model),
        data=body.read_bytes(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read()[:300]!r}"
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    if not spec.check_outputs:
        return None
    want: dict[str, list[Any]] = json.loads(expected.read_text())
    if protocol == "v1":
        name = "output" if "output" in want else "predict"
        got = {name: _flat(answer.get("predictions", []))}
        want = {name: want[name]}
    else:
        got = {o["name"]: _flat(o.get("data", [])) for o in answer.get("outputs", [])}
    for name, values in want.items():
        if name not in got:
            return f"output {name!r} missing (got {sorted(got)})"
        a, b = np.asarray(got[name], dtype=np.float64), np.asarray(values, dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6):
            return f"output {name!r} differs: {got[name][:4]} vs {values[:4]}"
    return None


def inferd_repo_with(models_root: Path, line: str) -> Path:
    """A copy of inferd's repository (``models/inferd-variant``) with ``line`` added to every
    model.yaml, leaving ``models/inferd`` (which run.py uses) as it is."""
    src, dst = models_root / "inferd", models_root / "inferd-variant"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for model in (p for p in dst.iterdir() if p.is_dir()):
        yaml = model / "model.yaml"
        yaml.write_text((yaml.read_text() if yaml.exists() else "") + line + "\n")
    return dst


def add_batching_options(ap: argparse.ArgumentParser) -> None:
    """``--batching`` and ``--mlserver-batch-time`` (run.py and grpc_bench.py)."""
    ap.add_argument(
        "--batching",
        type=int,
        default=0,
        help="N > 0: inferd's dynamic batching (max_batch_size N, no queue delay) and MLServer's "
        "adaptive batching (max_batch_size N) on; KServe's ModelServer has none of its own",
    )
    ap.add_argument(
        "--mlserver-batch-time",
        type=float,
        default=0.001,
        help="MLServer's max_batch_time in seconds with --batching (it needs one > 0)",
    )


def inferd_variant(models_root: Path, instance_kind: str, batch: int) -> tuple[Path, str]:
    """inferd's repository with the replica kind and dynamic batching asked for, and the
    configuration note for the results ("" when it is inferd's defaults).

    ``batch`` > 0: ``max_batch_size: batch`` and dynamic batching with no queue delay (a batch is
    whatever has arrived when a replica is free: no request waits for company).
    """
    lines = []
    if instance_kind != "process":
        lines.append(f"instance_kind: {instance_kind}")
    if batch > 0:
        lines += [f"max_batch_size: {batch}", "dynamic_batching: {max_queue_delay: 0}"]
    if not lines:
        return models_root / "inferd", ""
    repo = inferd_repo_with(models_root, "\n".join(lines))
    return repo, "; " + ", ".join(lines) + " in every model.yaml"


def mlserver_variant(
    models_root: Path, port: int, parallel_workers: int, batch: int, batch_time_s: float
) -> ServerSpec:
    """MLServer on its repository, or with ``batch`` > 0 on a copy of it
    (``models/mlserver-batching``) with its adaptive batching on (``max_batch_size``,
    ``max_batch_time``) in every model-settings.json."""
    if batch <= 0:
        return mlserver_spec(models_root / "mlserver", port, parallel_workers)
    src, dst = models_root / "mlserver", models_root / "mlserver-batching"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for settings in dst.glob("*/model-settings.json"):
        doc = json.loads(settings.read_text())
        doc.update(max_batch_size=batch, max_batch_time=batch_time_s)
        settings.write_text(json.dumps(doc, indent=2) + "\n")
    spec = mlserver_spec(dst, port, parallel_workers)
    spec.config += f"; adaptive batching max_batch_size {batch}, max_batch_time {batch_time_s:g} s"
    return spec
