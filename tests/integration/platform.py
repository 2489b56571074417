"""A whole inferd (data + control plane) on a real socket with its own registry, for tests."""

from __future__ import annotations

import functools
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from inferd import serve
from inferd.runner import RunningServer
from tests.conftest import ADMIN


class Platform:
    """Starts/stops an in-thread server over `data_dir` (and `database_url`, if given)."""

    def __init__(self, data_dir: Path, database_url: str | None = None, **settings: Any) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.settings = settings
        self.server: RunningServer | None = None
        self.client: httpx.Client | None = None

    def start(self) -> Platform:
        other = {k: v for k, v in self.settings.items() if k != "registry"}
        registry = dict(self.settings.get("registry", {}))
        if self.database_url:
            registry["database_url"] = self.database_url
        running = serve(
            http_port=0,
            block=False,
            data_dir=self.data_dir,
            registry=registry,
            grpc={"port": 0},
            log_level="warning",
            **other,
        )
        assert running is not None
        self.server = running
        self.client = httpx.Client(base_url=running.url, timeout=60)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop()
        self.server = self.client = None

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None
        return self.client

    # ---- helpers -----------------------------------------------------------------------

    def user(self, username: str, password: str = "correct horse battery") -> dict[str, str]:
        """Create a member (as admin) and log in; returns its Authorization header."""
        r = self.http.post("/api/v1/auth/register", headers=ADMIN,
                           json={"username": username, "password": password})  # fmt: skip
        assert r.status_code == 201, r.text
        r = self.http.post("/api/v1/auth/login",
                           json={"username": username, "password": password})  # fmt: skip
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def upload(
        self, headers: dict[str, str], name: str, data: bytes, meta: dict[str, Any] | None = None,
        filename: str = "model.bin",
    ) -> httpx.Response:  # fmt: skip
        files = {"file": (filename, io.BytesIO(data), "application/octet-stream")}
        form = {"meta": _json(meta)} if meta else None
        return self.http.post(f"/api/v1/models/{name}/versions", headers=headers, files=files,
                              data=form)  # fmt: skip

    def public_model(
        self, headers: dict[str, str], name: str, data: bytes, meta: dict[str, Any],
        versions: int = 1, filename: str = "model.bin",
    ) -> None:  # fmt: skip
        """Create the public model `name` with `versions` ready versions of `data`."""
        r = self.http.post("/api/v1/models", headers=headers,
                           json={"name": name, "visibility": "public"})  # fmt: skip
        assert r.status_code == 201, r.text
        for _ in range(versions):
            r = self.upload(headers, name, data, meta, filename)
            assert r.status_code == 201 and r.json()["status"] == "ready", r.text

    def deploy(self, headers: dict[str, str], body: dict[str, Any], timeout: float = 60) -> dict:
        """POST a deployment and wait until it is ready."""
        r = self.http.post("/api/v1/deployments", headers=headers, json=body)
        assert r.status_code == 201, r.text
        d = self.wait_deployment(headers, r.json()["id"], timeout)
        assert d["status"] == "ready", d
        return d

    def wait_deployment(self, headers: dict[str, str], dep_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            d = self.http.get(f"/api/v1/deployments/{dep_id}", headers=headers).json()
            if d.get("status") != "deploying" or time.monotonic() > deadline:
                return d
            time.sleep(0.1)


def _json(doc: Any) -> str:
    import orjson

    return orjson.dumps(doc).decode()


@functools.cache
def iris_skops() -> tuple[bytes, dict[str, Any]]:
    """A small skops-serialised classifier and a sample V2 request for it (built once)."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=300).fit(x, y)
    sample = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4],
                          "data": x[:2].astype(np.float32).ravel().tolist()}]}  # fmt: skip
    return sio.dumps(clf), sample


class ServerProcess:
    """`inferd serve` in a process of its own, for tests that kill it (SIGKILL) mid-way.
    Settings come as `{"section": {"field": value}}`, passed as INFERD_<SECTION>__<FIELD>."""

    def __init__(self, data_dir: Path, model_repository: Path | None = None,
                 database_url: str | None = None, **settings: dict[str, Any]) -> None:  # fmt: skip
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "INFERD_DATA_DIR": str(data_dir)}
        if database_url:
            env["INFERD_REGISTRY__DATABASE_URL"] = database_url
        for section, fields in settings.items():
            for name, value in fields.items():
                env[f"INFERD_{section.upper()}__{name.upper()}"] = str(value)
        cmd = [sys.executable, "-m", "inferd.cli.main", "serve", "--http-port", str(self.port),
               "--no-grpc", "--no-access-log", "--log-level", "warning"]  # fmt: skip
        if model_repository is not None:
            cmd += ["--model-repository", str(model_repository)]
        self.proc = subprocess.Popen(cmd, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.http.get("/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"inferd serve did not start (exit {self.proc.returncode})")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind (its worker processes notice their parent died)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.http.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except Exception:
                self.kill()
        self.http.close()
