"""The web console on a real server: `/` sends browsers to `/console/` and keeps answering the
kserve SDK's liveness check; the built console loads only this server's files, none inline,
under a strict Content-Security-Policy, with hashed assets cached for a year."""

from __future__ import annotations

import os
import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from inferd.api.admin.console import CSP, IMMUTABLE, built

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
_TAG = re.compile(r"<(script|link)\b([^>]*)>", re.IGNORECASE)
_URL = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def test_root_answers_clients_and_sends_browsers_to_the_console(client: httpx.Client) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        r = client.get("/", headers=headers)
        assert r.status_code == 200 and r.json() == {"status": "alive"}, headers
    r = client.post("/", headers={"Accept": BROWSER})
    assert r.status_code == 200 and r.json() == {"status": "alive"}
    r = client.get("/", headers={"Accept": BROWSER})
    assert r.status_code == 307 and r.headers["location"] == "/console/"
    # the console is under its own prefix: the APIs around it are untouched
    assert client.get("/v2", headers={"Accept": BROWSER}).json()["name"] == "inferd"
    assert client.get("/console").status_code in (307, 308)


def test_console_loads_only_its_own_files(client: httpx.Client) -> None:
    if not built():
        if os.environ.get("INFERD_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail("the console is not built; INFERD_TEST_REQUIRE_SERVICES=1 requires it")
        r = client.get("/console/")
        assert r.status_code == 404 and "npm run build" in r.text
        pytest.skip("the console is not built (`make install` builds it where npm is installed)")
    r = client.get("/console/")  # no credentials needed, like /docs
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["cache-control"] == "no-cache"
    tags = _TAG.findall(r.text)
    scripts = [attrs for tag, attrs in tags if tag.lower() == "script"]
    assert scripts and all("src=" in a for a in scripts), "an inline script: the CSP forbids it"
    assert "<style" not in r.text.lower() and " style=" not in r.text.lower()
    urls = [u for _, attrs in tags for u in _URL.findall(attrs)]
    assets = [u for u in urls if "/assets/" in u]
    assert len(assets) >= 2, urls  # the script and the stylesheet
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url  # nothing from another host
        asset = client.get(urljoin(str(r.url), url))
        assert asset.status_code == 200, url
        if url in assets:
            assert asset.headers["cache-control"] == IMMUTABLE, url
    js = client.get(urljoin(str(r.url), next(u for u in assets if u.endswith(".js"))))
    assert "javascript" in js.headers["content-type"]
    # the bundle reaches no other host either (links in text are fine, fetches are not)
    assert not re.search(r"""fetch\(\s*["']https?://""", js.text)
