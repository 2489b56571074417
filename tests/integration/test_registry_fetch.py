"""SSRF-safe downloads against a real HTTP server on 127.0.0.1 (and a second one on 127.0.0.2)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from inferd.core.errors import InvalidInput, PayloadTooLarge
from inferd.registry.fetch import IPAddress, download, is_public_ip
from tests.conftest import free_port

DATA = os.urandom(300_000)
SECRET_BODY = b"SECRET-BODY-TEXT internal stack trace"


@dataclass
class Server:
    host: str
    port: int
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: a response without Content-Length ends when the connection closes.
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def send_body(self, status: int, body: bytes, length: bool = True, **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:
            server.seen.append((self.path, self.headers.get("Host", "")))
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/file/model.onnx":
                self.send_body(200, DATA, Content_Type="application/octet-stream")
            elif url.path == "/disposition":
                self.send_body(
                    200,
                    b"abc",
                    Content_Disposition='attachment; filename="../../etc/evil name.onnx"',
                )
            elif url.path == "/big-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                try:
                    self.wfile.write(b"\x00" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            elif url.path == "/big-undeclared":
                self.send_body(200, b"\x01" * 500_000, length=False)
            elif url.path == "/redirect":
                self.send_body(302, b"", Location=query["to"][0])
            elif url.path == "/loop":
                self.send_body(302, b"", Location="/loop")
            else:
                self.send_body(404, SECRET_BODY, Content_Type="text/plain")

    return Handler


def _serve(host: str) -> Iterator[Server]:
    port = free_port()
    server = Server(host, port)
    httpd = ThreadingHTTPServer((host, port), _handler(server))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve("127.0.0.1")


@pytest.fixture
def server2() -> Iterator[Server]:
    yield from _serve("127.0.0.2")


def only(*addresses: str):  # type: ignore[no-untyped-def]
    allowed = {ipaddress.ip_address(a) for a in addresses}
    return lambda addr: addr in allowed


ONLY_LOCAL = only("127.0.0.1")


# ---- the default policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "[::1]:{port}",
        "0x7f000001:{port}",
        "2130706433:{port}",
        "127.1:{port}",
        "0177.0.0.1:{port}",
        "[::ffff:127.0.0.1]:{port}",
        "LOCALHOST.:{port}",
    ],
)
async def test_default_policy_refuses_loopback(tmp_path: Path, server: Server, form: str) -> None:
    url = f"http://{form.format(port=server.port)}/file/model.onnx"
    with pytest.raises(InvalidInput, match="non-public address"):
        await download(url, tmp_path, max_bytes=10**7)
    assert server.seen == []
    assert list(tmp_path.iterdir()) == []


async def test_metadata_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="non-public address"):
        await download("http://169.254.169.254/latest/meta-data/", tmp_path, max_bytes=100)


# ---- a working download -----------------------------------------------------------------------


async def test_allowed_download(tmp_path: Path, server: Server) -> None:
    progress: list[int] = []
    result = await download(
        server.url("/file/model.onnx"),
        tmp_path,
        max_bytes=10**7,
        allow_ip=ONLY_LOCAL,
        on_progress=progress.append,
    )
    assert result.size == len(DATA)
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    assert result.path.read_bytes() == DATA
    assert result.path.parent == tmp_path and result.filename == "model.onnx"
    assert result.content_type == "application/octet-stream"
    assert result.final_url == server.url("/file/model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert progress and progress[-1] == len(DATA) and progress == sorted(progress)


async def test_second_download_of_the_same_name_does_not_clobber(
    tmp_path: Path, server: Server
) -> None:
    first = await download(
        server.url("/file/model.onnx"), tmp_path, max_bytes=10**7, allow_ip=ONLY_LOCAL
    )
    second = await download(
        server.url("/file/model.onnx"), tmp_path, max_bytes=10**7, allow_ip=ONLY_LOCAL
    )
    assert first.path != second.path and first.path.exists() and second.path.exists()


async def test_legacy_ipv4_spelling_is_the_address_it_means(tmp_path: Path, server: Server) -> None:
    url = f"http://2130706433:{server.port}/file/model.onnx"
    result = await download(url, tmp_path, max_bytes=10**7, allow_ip=ONLY_LOCAL)
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()


async def test_content_disposition_name_is_sanitised(tmp_path: Path, server: Server) -> None:
    result = await download(
        server.url("/disposition"), tmp_path, max_bytes=100, allow_ip=ONLY_LOCAL
    )
    assert result.filename == "evil_name.onnx"
    assert result.path == tmp_path / "evil_name.onnx"


# ---- redirects --------------------------------------------------------------------------------


async def test_redirect_within_policy_is_followed(tmp_path: Path, server: Server) -> None:
    url = server.url("/redirect?to=/file/model.onnx")
    result = await download(url, tmp_path, max_bytes=10**7, allow_ip=ONLY_LOCAL)
    assert result.size == len(DATA)
    assert [path for path, _ in server.seen] == [
        "/redirect?to=/file/model.onnx",
        "/file/model.onnx",
    ]


async def test_redirect_to_a_disallowed_address_is_refused_at_the_hop(
    tmp_path: Path, server: Server, server2: Server
) -> None:
    url = server.url(f"/redirect?to={server2.url('/file/model.onnx')}")
    # Sanity: the second server really serves when allowed.
    both = only("127.0.0.1", "127.0.0.2")
    assert (await download(url, tmp_path / "ok", max_bytes=10**7, allow_ip=both)).size == len(DATA)
    server2.seen.clear()
    (tmp_path / "no").mkdir()
    with pytest.raises(InvalidInput, match="non-public address"):
        await download(url, tmp_path / "no", max_bytes=10**7, allow_ip=ONLY_LOCAL)
    assert server2.seen == []
    assert list((tmp_path / "no").iterdir()) == []


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/_x"]
)
async def test_redirect_to_another_scheme_is_refused(
    tmp_path: Path, server: Server, target: str
) -> None:
    with pytest.raises(InvalidInput, match="only http and https"):
        await download(
            server.url(f"/redirect?to={target}"), tmp_path, max_bytes=100, allow_ip=ONLY_LOCAL
        )


async def test_redirect_loop_stops(tmp_path: Path, server: Server) -> None:
    with pytest.raises(InvalidInput, match="more than 3 redirects"):
        await download(
            server.url("/loop"), tmp_path, max_bytes=100, allow_ip=ONLY_LOCAL, max_redirects=3
        )
    assert len(server.seen) == 4


# ---- DNS: resolve once, check every answer, connect to what was checked ---------------------


async def test_any_disallowed_answer_refuses_and_nothing_is_sent(
    tmp_path: Path, server: Server
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "127.0.0.2"]

    with pytest.raises(InvalidInput, match="non-public address"):
        await download(
            f"http://models.example:{server.port}/file/model.onnx",
            tmp_path,
            max_bytes=10**7,
            allow_ip=ONLY_LOCAL,
            resolver=resolver,
        )
    assert server.seen == []


async def test_rebinding_resolver_is_asked_once_and_the_checked_ip_is_used(
    tmp_path: Path, server: Server
) -> None:
    answers = [["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]]
    asked: list[tuple[str, int]] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers[len(asked) - 1]

    result = await download(
        f"http://Models.Example:{server.port}/file/model.onnx",
        tmp_path,
        max_bytes=10**7,
        allow_ip=ONLY_LOCAL,
        resolver=rebinding,
    )
    assert result.size == len(DATA)
    assert asked == [("models.example", server.port)]
    # The name travels in the Host header; the socket went to the pinned address.
    assert server.seen == [("/file/model.onnx", f"models.example:{server.port}")]
    assert result.final_url == f"http://models.example:{server.port}/file/model.onnx"


async def test_resolver_pointing_inside_never_reaches_the_server(
    tmp_path: Path, server: Server
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with pytest.raises(InvalidInput, match="non-public address"):
        await download(
            f"http://public.example:{server.port}/file/model.onnx",
            tmp_path,
            max_bytes=10**7,
            resolver=resolver,  # default policy
        )
    assert server.seen == []


# ---- https: the pinned IP is dialled, the certificate is checked against the name -------------


def _make_pki(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("inferd test CA", ca_key, "inferd test CA", ca_key, True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(name, leaf_key, "inferd test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp / "ca.pem", tmp / "leaf.pem", tmp / "leaf.key"


@pytest.fixture
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, list]]:
    import ssl

    pki = tmp_path_factory.mktemp("pki")
    ca, leaf, key = _make_pki(pki, "models.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf, key)
    sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment]
    port = free_port()
    server = Server("127.0.0.1", port)
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(server))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server, ca, sni
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_https_verifies_the_name_while_dialling_the_pinned_ip(
    tmp_path: Path, tls_server: tuple[Server, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    import certifi

    server, ca, sni = tls_server
    monkeypatch.setattr(certifi, "where", lambda: str(ca))  # trust the test CA only

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    result = await download(
        f"https://models.example:{server.port}/file/model.onnx",
        tmp_path / "ok",
        max_bytes=10**7,
        allow_ip=ONLY_LOCAL,
        resolver=resolver,
    )
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    assert sni == ["models.example"]
    assert server.seen == [("/file/model.onnx", f"models.example:{server.port}")]

    # The same server under another name: the certificate does not match, nothing is sent.
    with pytest.raises(InvalidInput, match="TLS verification failed"):
        await download(
            f"https://other.example:{server.port}/file/model.onnx",
            tmp_path / "no",
            max_bytes=10**7,
            allow_ip=ONLY_LOCAL,
            resolver=resolver,
        )
    assert len(server.seen) == 1
    assert not (tmp_path / "no").exists() or list((tmp_path / "no").iterdir()) == []


# ---- size caps --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared", "/file/model.onnx"])
async def test_over_max_bytes(tmp_path: Path, server: Server, path: str) -> None:
    with pytest.raises(PayloadTooLarge, match="over the 100000 byte limit"):
        await download(server.url(path), tmp_path, max_bytes=100_000, allow_ip=ONLY_LOCAL)
    assert list(tmp_path.iterdir()) == [], "no partial file may stay behind"


# ---- refused URLs and server answers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://127.0.0.1/model.onnx", "only http and https"),
        ("gopher://127.0.0.1:70/_GET", "only http and https"),
        ("http://user:pass@127.0.0.1/x", "credentials"),
        ("http://user@127.0.0.1/x", "credentials"),
        ("http:///x", "host is empty"),
        ("http://" + "a" * 254 + "/x", "longer than 253"),
        ("http://exa mple.com/x", "spaces"),
        ("http://[::1%25eth0]/x", "zone"),
        ("http://1.2.3.4.5/x", "not a valid address"),
        ("http://127.0.0.1:99999/x", "not a valid URL"),
    ],
)
async def test_refused_urls(tmp_path: Path, url: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        await download(url, tmp_path, max_bytes=100, allow_ip=lambda a: True)


async def test_userinfo_refused_even_when_the_address_is_allowed(
    tmp_path: Path, server: Server
) -> None:
    url = f"http://user:pass@127.0.0.1:{server.port}/file/model.onnx"
    with pytest.raises(InvalidInput, match="credentials"):
        await download(url, tmp_path, max_bytes=10**7, allow_ip=ONLY_LOCAL)
    assert server.seen == []


async def test_404_does_not_echo_the_body(tmp_path: Path, server: Server) -> None:
    with pytest.raises(InvalidInput) as info:
        await download(server.url("/missing"), tmp_path, max_bytes=100, allow_ip=ONLY_LOCAL)
    assert info.value.message == "url: the server answered 404"
    assert list(tmp_path.iterdir()) == []


async def test_connection_refused_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="could not download: could not connect"):
        await download(
            f"http://127.0.0.1:{free_port()}/x", tmp_path, max_bytes=100, allow_ip=ONLY_LOCAL
        )


# ---- the address policy -----------------------------------------------------------------------

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1"]
NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.169.254",
    "169.254.0.1",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::127.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:db8::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "100::1",
]


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses(text: str) -> None:
    assert is_public_ip(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_non_public_addresses(text: str) -> None:
    addr: IPAddress = ipaddress.ip_address(text)
    assert not is_public_ip(addr)


def test_embedded_public_ipv4_stays_public() -> None:
    assert is_public_ip(ipaddress.ip_address("::ffff:8.8.8.8"))
    assert is_public_ip(ipaddress.ip_address("64:ff9b::808:808"))
