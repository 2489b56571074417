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


#: Every data-plane HTTP path, as the OpenAPI document names it, with its methods.
DATA_PLANE_PATHS = {
    "/": {"get"}, "/v2": {"get"}, "/v2/health/live": {"get"}, "/v2/health/ready": {"get"},
    "/v2/models": {"get"}, "/v2/models/stats": {"get"}, "/metrics": {"get"},
    "/v2/repository/index": {"get", "post"}, "/v2/repository/models/{name}/load": {"post"},
    "/v2/repository/models/{name}/unload": {"post"}, "/v1/models": {"get"},
    "/v1/models/{name}": {"get"}, "/v1/models/{name}:predict": {"post"},
    "/v1/completions": {"post"}, "/v1/chat/completions": {"post"}, "/v1/embeddings": {"post"},
    "/v1/images/generations": {"post"},
    **{f"/v2/models/{{name}}{v}{s}": {"post" if s[1:] in ("infer", "generate",
       "generate_stream") else "get"} for v in ("", "/versions/{version}")
       for s in ("", "/ready", "/config", "/stats", "/infer", "/generate", "/generate_stream")},
}  # fmt: skip


def test_openapi_document_describes_the_data_plane(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path, methods in DATA_PLANE_PATHS.items():
        assert path in paths, path
        assert set(paths[path]) == methods, (path, set(paths[path]))
        for method, op in paths[path].items():
            assert op.get("summary") and op.get("description"), (method, path)
            assert "200" in op["responses"], (method, path)
    schemas = doc["components"]["schemas"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    ref = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[-1] in schemas  # every referenced body is in the document
    assert "RequestInput" in schemas and "OpenAIError" in schemas
    assert any(p.startswith("/api/v1/") for p in paths)  # the management API too


def test_fastapi_data_plane_routes_keep_their_errors_and_labels(client: httpx.Client) -> None:
    # a wrong method: 405 in the route's dialect, counted under the route's name
    r = client.post("/v2/models/simple/ready")
    assert r.status_code == 405
    assert r.json() == {"error": "method POST not allowed here; use GET"}
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405
    assert client.get("/v2/models/").json()["models"]  # trailing slash ignored, as on /v2
    assert client.get("/v2/models/nope/config").status_code == 404
    metrics = client.get("/metrics").text
    assert 'inferd_http_requests_total{code="405",route="model_ready"}' in metrics
    assert 'inferd_http_requests_total{code="405",route="openai_chat"}' in metrics
    assert 'inferd_http_requests_total{code="404",route="model_config"}' in metrics
    assert 'inferd_http_requests_total{code="200",route="models"}' in metrics
