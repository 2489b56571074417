"""The web console's serving (api/admin/console.py) and its typed API client's source: the
files with their caching and security headers, the page shown when the console is not built,
and console/openapi.json (from which the client's types are generated) matching the server's
OpenAPI document.

`python -m tests.unit.test_console_files --write-openapi` (`make console-api`) rewrites the
saved document after an API change."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from inferd.api.admin.console import CSP, IMMUTABLE, add_console

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "console" / "openapi.json"


def server_openapi() -> dict[str, Any]:
    """The OpenAPI document a default server serves at /openapi.json (built, not started)."""
    from inferd.app import build
    from inferd.settings import Settings

    doc: dict[str, Any] = build(Settings()).asgi.fallback.openapi()
    return json.loads(json.dumps(doc))  # as a client reads it: tuples become lists


def test_saved_openapi_document_is_the_servers() -> None:
    saved = json.loads(SAVED.read_text())
    assert saved == server_openapi(), (
        "console/openapi.json differs from the server's OpenAPI document: run `make console-api` "
        "and rebuild the console (the client's types are generated from it)"
    )


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(
        '<!doctype html><script type="module" src="./assets/index-abc123.js"></script>'
    )
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log('hi')")
    (tmp_path / "favicon.svg").write_text("<svg/>")
    (tmp_path.parent / "secret.txt").write_text("not served")
    return tmp_path


def _client(directory: Path) -> httpx.AsyncClient:
    app = FastAPI()
    add_console(app, directory)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inferd")


async def test_index_is_revalidated_and_assets_cached_for_a_year(dist: Path) -> None:
    async with _client(dist) as client:
        index = await client.get("/console/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        assert index.headers["content-security-policy"] == CSP
        assert index.headers["x-frame-options"] == "DENY"
        assert index.headers["x-content-type-options"] == "nosniff"
        again = await client.get("/console/", headers={"if-none-match": index.headers["etag"]})
        assert again.status_code == 304
        asset = await client.get("/console/assets/index-abc123.js")
        assert asset.status_code == 200 and asset.text == "console.log('hi')"
        assert asset.headers["cache-control"] == IMMUTABLE
        assert "javascript" in asset.headers["content-type"]
        icon = await client.get("/console/favicon.svg")  # not hashed: revalidated
        assert icon.headers["cache-control"] == "no-cache"
        redirect = await client.get("/console")
        assert redirect.status_code in (307, 308)
        assert redirect.headers["location"].endswith("/console/")


def test_the_policy_allows_nothing_from_elsewhere_nor_inline() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in CSP and "http" not in CSP and "*" not in CSP


async def test_nothing_outside_the_build_is_served(dist: Path) -> None:
    async with _client(dist) as client:
        for path in ("/console/../secret.txt", "/console/%2e%2e/secret.txt",
                     "/console/assets/missing.js"):  # fmt: skip
            r = await client.get(path)
            assert r.status_code == 404, path
            assert "not served" not in r.text
        r = await client.post("/console/")
        assert r.status_code == 405


async def test_an_unbuilt_console_says_how_to_build_it(tmp_path: Path) -> None:
    async with _client(tmp_path / "missing") as client:
        r = await client.get("/console/")
        assert r.status_code == 404
        assert "npm run build" in r.text and "make install" in r.text
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["cache-control"] == "no-store"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-openapi"]:
        sys.exit("usage: python -m tests.unit.test_console_files --write-openapi")
    SAVED.write_text(json.dumps(server_openapi(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {SAVED.relative_to(ROOT)}")
