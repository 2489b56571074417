"""The API docs pages work without internet access: every script, stylesheet and icon they load
comes from this server (the installed package), and each answers with its content type. No
credentials are needed, as for /openapi.json."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest

#: `src="..."` / `href="..."` attributes, and the URL strings of Swagger UI's inline set-up.
_ATTR = re.compile(r"""\b(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_REMOTE = re.compile(r"""(?:https?:)?//[A-Za-z0-9.\-]+""")

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


def _urls(html: str) -> list[str]:
    return _ATTR.findall(html)


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
def test_docs_page_loads_only_local_assets(
    client: httpx.Client, page: str, assets: set[str]
) -> None:
    r = client.get(page)  # no credentials
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    # nothing on the page points at another host: no http(s):// nor protocol-relative URL
    assert not _REMOTE.search(html.replace("window.location.origin", "")), _REMOTE.findall(html)
    urls = _urls(html)
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        assert url.startswith("/"), url
    loaded = {url.rsplit("/", 1)[-1] for url in urls if url.startswith("/docs/assets/")}
    assert loaded == assets, urls
    for url in urls:
        if not url.startswith("/docs/assets/"):
            continue
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rfind(".") :]
        ctype = asset.headers["content-type"].split(";")[0].strip()
        assert ctype in CONTENT_TYPES[suffix], (url, ctype)
        assert len(asset.content) > 0, url


def test_swagger_ui_page_is_wired_to_the_local_bundle_and_document(client: httpx.Client) -> None:
    html = client.get("/docs").text
    assert "url: '/openapi.json'" in html
    assert '"validatorUrl": null' in html  # Swagger UI's validator badge is an image from afar
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content  # the real Swagger UI build, not a stub
    assert b"Redoc" in client.get("/docs/assets/redoc.standalone.js").content
    css = client.get("/docs/assets/swagger-ui.css").text
    assert ".swagger-ui" in css
    doc = client.get("/openapi.json")
    assert doc.status_code == 200
    # FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on
    assert doc.json()["openapi"].startswith("3.1")
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert not _REMOTE.search(redirect.text)


def test_assets_folder_is_confined(client: httpx.Client) -> None:
    assert client.get("/docs/assets/no-such-file.js").status_code == 404
    assert client.get("/docs/assets/..%2f__init__.py").status_code == 404
    assert client.get("/docs/assets/../core.py").status_code == 404
