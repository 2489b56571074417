"""/metrics on the default (public) setting never names a private model to someone who may not see
it: its series reach admins, its owner and the operator's scrape token, nobody else."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN
from tests.integration.platform import Platform

TOKEN = "scrape-" + "k" * 32
SECRET = "alice_secret"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Iterator[dict[str, Any]]:
    """Alice's private model is deployed next to a public repository model; Bob is a member."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(example_repo / "simple", repo / "simple")
    p = Platform(tmp_path_factory.mktemp("metrics") / "data", model_repository=repo,
                 auth={"metrics_token": TOKEN}).start()  # fmt: skip
    http = p.http
    alice, bob = p.user("alice"), p.user("bobby")
    assert http.post("/api/v1/models", headers=alice, json={"name": SECRET}).status_code == 201
    onnx = (example_repo / "simple" / "1" / "model.onnx").read_bytes()
    assert p.upload(alice, SECRET, onnx, filename="model.onnx").status_code == 201
    dep = http.post("/api/v1/deployments", headers=alice, json={"model": SECRET}).json()
    assert p.wait_deployment(alice, dep["id"])["status"] == "ready"
    try:
        yield {"p": p, "alice": alice, "bob": bob}
    finally:
        p.stop()


def _models(http: httpx.Client, headers: dict[str, str]) -> set[str]:
    """The `model` label values of every series /metrics shows these credentials."""
    r = http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return {s.labels["model"] for f in text_string_to_metric_families(r.text) for s in f.samples
            if "model" in s.labels}  # fmt: skip


def test_private_series_are_hidden_from_anonymous_and_other_members(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    for headers in ({}, world["bob"]):
        shown = _models(http, headers)
        assert SECRET not in shown
        assert SECRET not in http.get("/metrics", headers=headers).text
        assert "simple" in shown  # public models' series as before


def test_admin_owner_and_scrape_token_see_private_series(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    for headers in (ADMIN, world["alice"], {"Authorization": f"Bearer {TOKEN}"}):
        assert {SECRET, "simple"} <= _models(http, headers)
    r = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert r.status_code == 401 and SECRET not in r.text


def test_series_follow_the_models_visibility(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    alice = world["alice"]
    r = http.patch(f"/api/v1/models/{SECRET}", headers=alice, json={"visibility": "public"})
    assert r.status_code == 200, r.text
    try:
        assert SECRET in _models(http, {})
    finally:
        r = http.patch(f"/api/v1/models/{SECRET}", headers=alice, json={"visibility": "private"})
        assert r.status_code == 200, r.text
    assert SECRET not in _models(http, {})
