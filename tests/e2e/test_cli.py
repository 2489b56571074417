"""The `inferd` platform commands as subprocesses against a real `inferd serve` subprocess:
login (key and password), models, upload with a sample input, deploy, predict, keys and their
scopes, revocation, deletion — and errors printed as `error: ...` with exit status 1."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.client import Client, Credentials, InferdClientError, save_credentials
from tests.conftest import ADMIN_KEY, free_port
from tests.e2e.conftest import Process, start_server

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
ROW = [5.1, 3.5, 1.4, 0.2]
ACCESS_TTL_S = 1
#: When an access token is surely refused: its lifetime plus the server's clock leeway.
EXPIRED_AFTER_S = ACCESS_TTL_S + 5 + 1


class Cli:
    """Runs `python -m inferd.cli.main ...` with its own credentials file and server URL."""

    def __init__(self, url: str, config: Path) -> None:
        self.url = url
        self.config = config

    def __call__(
        self, *args: str, key: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "INFERD_URL": self.url, "INFERD_CONFIG": str(self.config)}
        env.pop("INFERD_API_KEY", None)
        if key is not None:
            env["INFERD_API_KEY"] = key
        r = subprocess.run([sys.executable, "-m", "inferd.cli.main", *args], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        if ok:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    def json(self, *args: str, key: str | None = None) -> Any:
        return json.loads(self(*args, "--json", key=key).stdout)


def failed(r: subprocess.CompletedProcess[str], message: str) -> None:
    """The command failed the way every command fails: `error: ...`, status 1, no traceback."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: "), r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Process]:
    # its own registry: start_server copies os.environ into the server's environment
    monkeypatch.setenv("INFERD_DATA_DIR", str(tmp_path / "data"))
    # sessions expire within the test, so the CLI must refresh them (and save the new pair)
    monkeypatch.setenv("INFERD_AUTH__ACCESS_TOKEN_TTL_S", str(ACCESS_TTL_S))
    monkeypatch.setenv("INFERD_AUTH__CREDENTIAL_CACHE_S", "0")
    (tmp_path / "repo").mkdir()
    proc = start_server(tmp_path / "repo", tmp_path / "server.log", grpc=False)
    yield proc
    proc.proc.terminate()
    try:
        proc.proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.proc.kill()


def iris_model(path: Path) -> Any:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=300).fit(x.astype(np.float32), y)
    sio.dump(clf, path)
    return clf


def test_platform_workflow_through_the_cli(server: Process, tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "credentials.json"
    cli = Cli(server.url, config)

    # an API key login is saved privately; the admin then makes a member through the SDK
    assert "as admin" in cli("login", "--key", ADMIN_KEY).stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["api_key"] == ADMIN_KEY
    with Client(server.url, api_key=ADMIN_KEY) as admin:
        admin.register("alice", PASSWORD)

    # a password login replaces it with a token pair; later commands act as alice
    assert "as alice (member" in cli("login", "--username", "alice", "--password", PASSWORD).stdout
    saved = json.loads(config.read_text())
    assert "api_key" not in saved and saved["access_token"] and saved["refresh_token"]
    logged_in = time.monotonic()
    me = cli.json("whoami")
    assert (me["username"], me["via"]) == ("alice", "token")

    cli("models", "create", "iris-cli", "--framework", "sklearn", "--tag", "iris", "--tag", "demo")
    listed = {m["name"]: m for m in cli.json("models", "list")}
    assert listed["iris-cli"]["tags"] == ["iris", "demo"]
    assert listed["iris-cli"]["visibility"] == "private"

    artifact = tmp_path / "iris.skops"
    clf = iris_model(artifact)
    sample = json.dumps({"input": [ROW, [6.7, 3.0, 5.2, 2.3]]})
    up = cli("models", "upload", "iris-cli", str(artifact), "--sample-input", sample)
    assert "iris-cli version 1: ready (skops" in up.stdout

    shown = cli.json("models", "show", "iris-cli")
    assert shown["model"]["name"] == "iris-cli"
    (v1,) = shown["versions"]
    assert (v1["version"], v1["status"], v1["format"]) == (1, "ready", "skops")
    assert v1["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert v1["size_bytes"] == artifact.stat().st_size
    # the {"input": [[...]]} shorthand became a V2 FP32 body
    (tensor,) = v1["sample_input"]["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("input", "FP32", [2, 4])

    dep = cli.json("deploy", "iris-cli")
    assert (dep["status"], dep["version"], dep["model"]) == ("ready", 1, "iris-cli"), dep

    out = json.loads(cli("predict", "iris-cli", "--input", json.dumps({"input": [ROW]})).stdout)
    outputs = {o["name"]: o for o in out["outputs"]}
    expected = clf.predict(np.array([ROW], dtype=np.float32)).tolist()
    assert outputs["predict"]["data"] == expected and outputs["predict"]["shape"] == [1]
    assert "predict_proba" in outputs

    assert cli("deployments", "test", dep["id"]).stdout.startswith("passed")
    assert [d["id"] for d in cli.json("deployments", "list")] == [dep["id"]]

    # deploying again updates the one deployment in place
    again = cli.json("deploy", "iris-cli", "--instance-kind", "thread", "--max-batch-size", "4")
    assert (again["id"], again["status"], again["generation"]) == (dep["id"], "ready", 2)
    assert again["config"]["instance_kind"] == "thread"
    assert again["config"]["batching"] == {"max_batch_size": 4}

    # a second version takes a share of the traffic; the first keeps serving
    assert "iris-cli version 2: ready" in cli("models", "upload", "iris-cli", str(artifact)).stdout
    split = cli.json("traffic", "set", "iris-cli", "1=80", "v2=20")
    assert split["traffic"] == [{"version": 1, "weight": 80}, {"version": 2, "weight": 20}]
    assert (split["status"], split["version"]) == ("ready", 1), split
    shown = cli("traffic", "show", "iris-cli").stdout
    assert "80%" in shown and "20%" in shown
    failed(cli("traffic", "set", "iris-cli", "1=50", ok=False),
           "traffic: weights must sum to 100")  # fmt: skip
    # a routing policy: a header rule to revision 2 and a circuit breaker; bad ones name the field
    policy = {"rules": [{"header": "x-tenant", "value": "acme", "version": 2}],
              "circuit_breaker": {"failures": 3}}  # fmt: skip
    set_policy = json.loads(cli("routing", "set", "iris-cli", json.dumps(policy)).stdout)
    assert set_policy["rules"] == policy["rules"] and set_policy["circuit_breaker"]["failures"] == 3
    assert json.loads(cli("routing", "show", "iris-cli").stdout) == set_policy
    assert cli.json("routing", "set", "iris-cli", json.dumps(policy))["routing"] == set_policy
    failed(cli("traffic", "set", "iris-cli", "1=100", ok=False),  # a rule still names v2
           "routing.rules[0].version")  # fmt: skip
    failed(cli("routing", "set", "iris-cli", '{"rules": [{"header": "x", "value": "a", '
               '"version": 7}]}', ok=False), "routing.rules[0].version")  # fmt: skip
    assert json.loads(cli("routing", "set", "iris-cli", "{}").stdout) == {}
    assert cli.json("traffic", "set", "iris-cli", "1=100")["traffic"] == [
        {"version": 1, "weight": 100}]  # fmt: skip

    # an infer-only key: it predicts, it cannot manage, and revoked it stops at once
    made = cli("keys", "create", "ci", "--scope", "infer")
    key = made.stdout.strip()
    assert key.startswith("inferd_") and "not be shown again" in made.stderr
    (ci,) = [k for k in cli.json("keys", "list") if k["name"] == "ci"]
    assert ci["scopes"] == ["infer"] and key.startswith(ci["prefix"])
    by_key = json.loads(cli("predict", "iris-cli", "--input", json.dumps({"input": [ROW]}),
                            key=key).stdout)  # fmt: skip
    assert by_key["outputs"][0]["name"] == "predict"
    failed(cli("models", "create", "other", key=key, ok=False), "needs the 'manage' scope")
    cli("keys", "revoke", ci["id"])
    r = cli("predict", "iris-cli", "--input", json.dumps({"input": [ROW]}), key=key, ok=False)
    failed(r, "error: ")
    assert "inferd login" in r.stderr  # a 401 says how to get a credential

    # the first access token has expired by now: commands went on by refreshing the session
    time.sleep(max(0.0, logged_in + EXPIRED_AFTER_S - time.monotonic()))
    assert cli.json("whoami")["username"] == "alice"
    refreshed = json.loads(config.read_text())
    assert refreshed["access_token"] != saved["access_token"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    with Client(server.url, token=saved["access_token"]) as stale:
        with pytest.raises(InferdClientError) as e:
            stale.me()
        assert e.value.status == 401

    cli("deployments", "delete", dep["id"])
    assert cli.json("deployments", "list") == []
    cli("models", "delete", "iris-cli", "--yes")
    failed(cli("models", "show", "iris-cli", ok=False), "model 'iris-cli' not found")

    assert cli("logout").stdout.strip() == "logged out" and not config.exists()
    failed(cli("keys", "list", ok=False), "authentication required")


def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    cli = Cli(f"http://127.0.0.1:{free_port()}", tmp_path / "credentials.json")
    failed(cli("models", "list", ok=False), "cannot reach http://127.0.0.1:")
    failed(cli("predict", "m", "--input", "{not json", ok=False), "--input: not valid JSON")
    failed(cli("predict", "m", "--input", '{"x": [[1.0], [2.0, 3.0]]}', ok=False), "rectangular")


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b'{"error": "authentication required"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_saved_credentials_go_only_to_the_server_they_were_saved_for(tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    config = tmp_path / "credentials.json"
    try:
        cli = Cli(url, config)
        save_credentials(Credentials("http://127.0.0.1:1", api_key="inferd_other_secret"), config)
        failed(cli("whoami", ok=False), "authentication required")
        save_credentials(Credentials(url + "/", api_key="inferd_this_secret"), config)
        r = cli("whoami", ok=False)
        failed(r, "authentication required")
        assert "inferd login" in r.stderr
        failed(cli("whoami", key="inferd_env_secret", ok=False), "authentication required")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert _Recorder.seen == [None, "Bearer inferd_this_secret", "Bearer inferd_env_secret"]
