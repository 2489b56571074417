"""PostgreSQL going away under a running server (RELIABILITY F10): the control plane answers 503
with Retry-After, authentication fails closed, inference of public models carries on, and
everything recovers when the database is back. The outage is a TCP proxy that is cut."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

from tests.conftest import ADMIN
from tests.integration.platform import Platform


class Proxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; `cut()` drops every connection and refuses new
    ones until `restore()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_database_outage_and_recovery(
    tmp_path: Path, postgres_url: str, example_repo: Path
) -> None:
    host_db = postgres_url.split("@", 1)[1]  # 127.0.0.1:5432/name
    hostport = host_db.split("/", 1)[0]
    host, port = hostport.split(":")
    proxy = Proxy((host, int(port)))
    url = postgres_url.replace(hostport, f"127.0.0.1:{proxy.port}")
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "simple", repo / "simple")
    # no credential cache: every keyed call must reach the database
    auth = {"credential_cache_s": 0}
    p = Platform(tmp_path / "data", url, model_repository=repo, auth=auth).start()
    try:
        http = p.http
        frank = p.user("frank")
        key = http.post("/api/v1/keys", headers=frank, json={"name": "k"}).json()["key"]
        body = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                            "data": list(range(16))},
                           {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16],
                            "data": [1] * 16}]}  # fmt: skip
        proxy.cut()

        r = http.get("/api/v1/models", headers=ADMIN)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert r.json() == {"error": "database unavailable"}
        r = http.post("/api/v1/auth/login", json={"username": "frank", "password": "x" * 10})
        assert r.status_code == 503
        # authentication fails closed: an uncached key is not let through
        r = http.post("/v2/models/simple/infer", headers={"x-api-key": key}, json=body)
        assert r.status_code == 503, r.text
        # inference that needs no database carries on
        assert http.post("/v2/models/simple/infer", json=body).status_code == 200
        assert http.get("/v2/health/live").status_code == 200

        proxy.restore()
        deadline = time.monotonic() + 10
        while http.get("/api/v1/models", headers=ADMIN).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after the database came back"
            time.sleep(0.1)
        r = http.post("/v2/models/simple/infer", headers={"x-api-key": key}, json=body)
        assert r.status_code == 200
    finally:
        p.stop()
        proxy.close()
