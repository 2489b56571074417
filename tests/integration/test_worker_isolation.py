"""Worker isolation (RELIABILITY S8): model code that tries to read the server's secrets, write
where it should not, or reach the network, from a real server's real worker processes — an
uploaded model (a trusted owner's `model.py`, through the control plane) and a model of the
operator's repository. The model reports what it managed as its output."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import textwrap
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import inferd
from tests.conftest import ADMIN
from tests.integration.platform import Platform

PROBE = textwrap.dedent(
    """
    import errno, json, os, socket, tempfile
    import numpy as np

    def attempt(fn):
        try:
            fn()
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    def read(path):
        with open(path, "rb") as f:
            f.read(1)

    def write(path):
        with open(path, "a") as f:
            f.write("planted")

    def namespaces(kind):
        # every thread's: namespaces are per thread, none may have stayed outside
        tasks = os.listdir("/proc/self/task")
        return sorted({os.readlink(f"/proc/self/task/{t}/ns/{kind}") for t in tasks})

    def connect(host, port):
        with socket.create_connection((host, port), timeout=3):
            pass

    class Model:
        def load(self, context):
            self.path = str(context.path)

        def infer(self, inputs, parameters):
            p = parameters
            report = {
                "uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
                "env": sorted(os.environ),
                "read_db": attempt(lambda: read(p["db"])),
                "see_data_dir": os.path.exists(p["db"]),
                "read_server_environ": attempt(lambda: read(f"/proc/{p['server_pid']}/environ")),
                "read_own_files": attempt(lambda: read(os.path.join(self.path, "model.py"))),
                "write_model_dir": attempt(lambda: write(os.path.join(self.path, "planted"))),
                "write_model_file": attempt(lambda: write(os.path.join(self.path, "model.py"))),
                "write_app_dir": attempt(lambda: write(os.path.join(p["app_dir"], "planted"))),
                "write_tmp": attempt(lambda: write("/tmp/inferd-isolation-planted")),
                "write_scratch": attempt(lambda: tempfile.NamedTemporaryFile().close()),
                "read_shm_canary": attempt(lambda: read(p["shm_canary"])),
                "connect_listener": attempt(lambda: connect("127.0.0.1", int(p["port"]))),
                "connect_outside": attempt(lambda: connect("198.51.100.7", 9)),
                "interfaces": sorted(name for _, name in socket.if_nameindex()),
                "shm": sorted(os.listdir("/dev/shm")),
                "threads": len(os.listdir("/proc/self/task")),
                "net_ns": namespaces("net"),
                "mnt_ns": namespaces("mnt"),
            }
            report = np.array([json.dumps(report).encode()], dtype=object)
            return {"REPORT": report, "Y": inputs["X"] * 2}
    """
)
IO = {
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "REPORT", "datatype": "BYTES", "shape": [-1]},
                {"name": "Y", "datatype": "FP32", "shape": [-1]}],
}  # fmt: skip
YAML = """runtime: python
required: false
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: REPORT, datatype: BYTES, shape: [-1]}, {name: Y, datatype: FP32, shape: [-1]}]
"""
#: 2 MiB: the tensors cross through the worker's shared-memory folder, both ways
N = 1 << 19
APP_DIR = Path(inferd.__file__).parent
AS_ROOT = os.geteuid() == 0


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.sock.close()


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    # secrets in the server's environment that a worker must not get
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.setenv("INFERD_REGISTRY__S3_SECRET_KEY", "s3-secret")
    repo = tmp_path / "repo"
    (repo / "probe" / "1").mkdir(parents=True)
    (repo / "probe" / "1" / "model.py").write_text(PROBE)
    (repo / "probe" / "model.yaml").write_text(YAML)
    p = Platform(tmp_path / "data", model_repository=repo).start()
    try:
        yield p
    finally:
        p.stop()


def _upload(p: Platform) -> None:
    """A trusted owner's model.py, uploaded and deployed through the management API."""
    owner = p.user("trent")
    me = p.http.get("/api/v1/auth/me", headers=owner).json()
    assert p.http.patch(f"/api/v1/users/{me['id']}", headers=ADMIN,
                        json={"trusted": True}).status_code == 200  # fmt: skip
    assert p.http.post("/api/v1/models", headers=owner, json={"name": "up"}).status_code == 201
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.py", PROBE)
    r = p.upload(owner, "up", buf.getvalue(), IO, "code.zip")
    assert r.status_code == 201, r.text
    dep = p.http.post("/api/v1/deployments", headers=owner, json={"model": "up"}).json()
    assert p.wait_deployment(owner, dep["id"])["status"] == "ready"


def _report(p: Platform, model: str, listener: Listener, shm_canary: Path) -> dict[str, Any]:
    params = {"db": str(p.data_dir / "inferd.db"), "server_pid": os.getpid(),
              "app_dir": str(APP_DIR), "port": listener.port,
              "shm_canary": str(shm_canary)}  # fmt: skip
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [N], "data": [1.0] * N}],
            "parameters": params}  # fmt: skip
    r = p.http.post(f"/v2/models/{model}/infer", headers=ADMIN, json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outputs["Y"] == [2.0] * N
    report: dict[str, Any] = json.loads(outputs["REPORT"][0])
    return report


@pytest.fixture
def shm_canary() -> Iterator[Path]:
    """A world-readable file in the host's /dev/shm, as another program might leave there."""
    path = Path("/dev/shm") / f"inferd-isolation-canary-{os.getpid()}"
    path.write_text("other tenant's tensor")
    path.chmod(0o644)
    yield path
    path.unlink(missing_ok=True)


def test_model_code_reaches_no_secret_and_writes_only_its_scratch(
    platform: Platform, listener: Listener, shm_canary: Path
) -> None:
    _upload(platform)
    for model in ("up", "probe"):
        report = _report(platform, model, listener, shm_canary)
        leaked = [n for n in report["env"] if n.startswith(("INFERD_", "AWS_", "HF_TOKEN"))]
        assert leaked == [] and "DATABASE_URL" not in report["env"], (model, leaked)
        assert report["read_own_files"] == "ok", (model, report)
        assert report["write_scratch"] == "ok", (model, report)
        if not AS_ROOT:
            continue  # as its own user, the worker is the server's user: the rest is root-only
        assert report["uid"] != 0 and report["euid"] != 0 and report["groups"] == [], report
        # the data dir is not there at all; the server's environment is another user's
        assert report["read_db"] == "ENOENT" and not report["see_data_dir"], (model, report)
        assert report["read_server_environ"] == "EACCES", (model, report)
        # its model folder is read-only, the app and /tmp are not its own, nor others' /dev/shm
        assert report["write_model_dir"] == "EROFS", (model, report)
        assert report["write_model_file"] == "EROFS", (model, report)
        assert report["write_app_dir"] in ("EACCES", "EROFS"), (model, report)
        assert report["write_tmp"] == "EACCES", (model, report)
        assert report["read_shm_canary"] == "ENOENT", (model, report)
        # a view of the file system of its own, for each of its threads
        assert report["mnt_ns"] != [os.readlink("/proc/self/ns/mnt")], report
        assert len(report["mnt_ns"]) == 1, report
        # a private /dev/shm: nothing in it but the worker's own folder for tensors
        assert len(report["shm"]) == 1 and report["shm"][0].startswith("inferd-w-"), report
    # the server's secrets are the server's alone
    assert stat.S_IMODE((platform.data_dir / "inferd.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(platform.data_dir.stat().st_mode) == 0o700


def test_uploaded_code_has_no_network_repository_code_may(
    platform: Platform, listener: Listener, shm_canary: Path
) -> None:
    _upload(platform)
    uploaded = _report(platform, "up", listener, shm_canary)
    # its own loopback only: the host's 127.0.0.1 listener is not reached, no route leaves
    assert uploaded["interfaces"] == ["lo"], uploaded
    assert uploaded["threads"] > 1, uploaded  # numpy's pool and more: all in the namespace
    assert uploaded["net_ns"] != [os.readlink("/proc/self/ns/net")], uploaded
    assert len(uploaded["net_ns"]) == 1, uploaded
    assert uploaded["connect_listener"] == "ECONNREFUSED", uploaded
    assert uploaded["connect_outside"] == "ENETUNREACH", uploaded
    assert listener.accepted == 0
    repository = _report(platform, "probe", listener, shm_canary)
    assert repository["connect_listener"] == "ok", repository
    assert listener.accepted == 1
