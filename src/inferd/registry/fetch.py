"""Download a model artifact from an http(s) URL without becoming an SSRF proxy.

TorchServe's ShellTorch (CVE-2023-43654) and MLflow's webhook rebinding (mlflow #24179) show the
two ways this goes wrong: checking the URL string instead of where it resolves, and resolving
twice (once to check, once to connect). Here the host is resolved once, every address must pass
the policy, and the connection goes to the checked address itself (the Host header and TLS SNI
carry the name), with the same checks again on every redirect hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import re
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from inferd.core.errors import InvalidInput, PayloadTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS = {301, 302, 303, 307, 308}
_HOST_CHARS = re.compile(r"^[a-z0-9._-]+$")
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_BUFFER = 1 << 20  # write in 1 MiB pieces so the thread hop is paid rarely

# Ranges that `is_global` in some Python versions still calls global, or that embed an IPv4
# address which must be judged on its own.
_V4_BLOCKED = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]
_V6_BLOCKED = [
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchResult:
    """A finished download: the file, its size and SHA-256, and what the server called it."""

    path: Path
    size: int
    sha256: str
    final_url: str
    filename: str
    content_type: str


def is_public_ip(addr: IPAddress) -> bool:
    """Whether `addr` is a globally routable unicast address, safe to let the server connect to.

    False for loopback, private, shared (100.64/10), link-local (cloud metadata included),
    multicast, reserved, unspecified and documentation ranges, and for IPv6 forms that embed an
    IPv4 address (mapped, compatible, 6to4, NAT64) of any of those.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return False
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_ip(embedded)
        if any(addr in net for net in _V6_BLOCKED):
            return False
    elif any(addr in net for net in _V4_BLOCKED):
        return False
    return bool(
        addr.is_global
        and not (
            addr.is_private
            or addr.is_loopback
            or addr.is_link_local
            or addr.is_multicast
            or addr.is_reserved
            or addr.is_unspecified
        )
    )


# ---- URL checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # lowercase ASCII name, or the IP text (no brackets)
    port: int
    ip_literal: IPAddress | None
    path: str  # path + query, as sent
    url: str  # normalised, without userinfo or fragment


def _parse(url: str) -> _Target:
    if not isinstance(url, str) or not url or len(url) > 8192:
        raise InvalidInput("url: must be a non-empty http(s) URL of at most 8192 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidInput("url: spaces and control characters are not allowed")
    try:
        parts = urlsplit(url)
        port_value = parts.port
    except ValueError:
        raise InvalidInput("url: not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInput("url: only http and https URLs are allowed")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise InvalidInput("url: credentials in the URL (user:pass@) are not allowed")
    raw_host = parts.hostname or ""
    bracketed = parts.netloc.startswith("[")
    host, literal = _check_host(raw_host, bracketed)
    port = port_value if port_value is not None else (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_text = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    default = port == (443 if scheme == "https" else 80)
    netloc = host_text if default else f"{host_text}:{port}"
    return _Target(scheme, host, port, literal, path, f"{scheme}://{netloc}{path}")


def _check_host(raw: str, bracketed: bool) -> tuple[str, IPAddress | None]:
    if not raw:
        raise InvalidInput("url: the host is empty")
    if bracketed:
        if "%" in raw:
            raise InvalidInput("url: IPv6 zone identifiers are not allowed")
        try:
            return raw, ipaddress.IPv6Address(raw)
        except ValueError:
            raise InvalidInput("url: not a valid IPv6 address") from None
    if len(raw) > 253:
        raise InvalidInput("url: the host name is longer than 253 characters")
    try:
        host = raw.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        raise InvalidInput("url: the host is not a valid name") from None
    if host.endswith("."):
        host = host[:-1]  # the root label: "example.com." is "example.com"
    if not host or len(host) > 253:
        raise InvalidInput("url: the host name is empty or longer than 253 characters")
    if any(len(label) > 63 for label in host.split(".")):
        raise InvalidInput("url: a host name label is longer than 63 characters")
    if not _HOST_CHARS.match(host) or any(not label for label in host.split(".")):
        raise InvalidInput("url: the host is not a valid name")
    labels = host.split(".")
    if all(_NUMERIC_PART.match(label) for label in labels):
        # Legacy IPv4 spellings (0x7f000001, 2130706433, 127.1, 0177.0.0.1) are addresses to
        # the C resolver; decide them here as addresses instead of asking DNS.
        try:
            packed = socket.inet_aton(host)
        except OSError:
            raise InvalidInput("url: the host is not a valid address") from None
        addr = ipaddress.IPv4Address(packed)
        return str(addr), addr
    if _NUMERIC_PART.match(labels[-1]):
        raise InvalidInput("url: the host is not a valid name")
    return host, None


async def _default_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _pinned_address(
    target: _Target, resolver: Resolver, allow_ip: Callable[[IPAddress], bool]
) -> IPAddress:
    """Resolve once; every answer must pass the policy; return the one to connect to."""
    if target.ip_literal is not None:
        answers: list[IPAddress] = [target.ip_literal]
    else:
        try:
            texts = await resolver(target.host, target.port)
        except (OSError, UnicodeError):
            raise InvalidInput(f"url: could not resolve the host '{target.host}'") from None
        answers = []
        for text in texts:
            try:
                answers.append(ipaddress.ip_address(text))
            except ValueError:
                raise InvalidInput(f"url: could not resolve the host '{target.host}'") from None
    if not answers:
        raise InvalidInput(f"url: could not resolve the host '{target.host}'")
    # Every answer, not just the first: a resolver may rotate, and the attacker picks the order.
    if not all(allow_ip(addr) for addr in answers):
        raise InvalidInput(
            f"url: '{target.host}' is not allowed (resolves to a non-public address)"
        )
    return answers[0]


async def check_url(
    url: str,
    *,
    allow_ip: Callable[[IPAddress], bool] = is_public_ip,
    resolver: Resolver | None = None,
) -> None:
    """What can be checked before a download is accepted: scheme, host spelling and the resolved
    addresses (InvalidInput naming `url`). The download checks again, on every hop, because an
    answer may change between now and then."""
    await _pinned_address(_parse(url), resolver or _default_resolver, allow_ip)


@dataclass(frozen=True)
class PinnedUrl:
    """A URL that passed the policy, resolved once: send the request to `connect_url` (the
    checked address itself) with `host_header` as its Host header and `extensions` (TLS SNI)
    so that nothing resolves the name again."""

    url: str  # normalised, without userinfo or fragment
    host: str
    address: IPAddress
    connect_url: str
    host_header: str
    extensions: dict[str, str]


def _pinned(target: _Target, address: IPAddress) -> PinnedUrl:
    ip_text = f"[{address}]" if address.version == 6 else str(address)
    default_port = target.port == (443 if target.scheme == "https" else 80)
    host_header = target.host if default_port else f"{target.host}:{target.port}"
    if isinstance(target.ip_literal, ipaddress.IPv6Address):
        host_header = f"[{target.host}]" + ("" if default_port else f":{target.port}")
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return PinnedUrl(target.url, target.host, address,
                     f"{target.scheme}://{ip_text}:{target.port}{target.path}", host_header,
                     extensions)  # fmt: skip


async def pin_url(
    url: str,
    *,
    allow_ip: Callable[[IPAddress], bool] = is_public_ip,
    resolver: Resolver | None = None,
) -> PinnedUrl:
    """Check `url` as `check_url` does and return where to connect (InvalidInput naming `url`).
    For one request, made at once: redirects are the caller's to refuse or to pin again."""
    target = _parse(url)
    return _pinned(target, await _pinned_address(target, resolver or _default_resolver, allow_ip))


# ---- the download ----------------------------------------------------------------------------


def _safe_filename(name: str | None) -> str | None:
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = _UNSAFE_NAME_CHARS.sub("_", base).lstrip("._")[:200]
    return base if base.strip("_") else None


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header[:2048]
    try:
        return message.get_filename()
    except (ValueError, LookupError, UnicodeError):
        return None


def short_reason(error: httpx.HTTPError) -> str:
    """Why a request failed, in a fixed phrase (exception texts can carry addresses and paths)."""
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        if "CERTIFICATE" in str(error).upper() or "SSL" in str(error).upper():
            return "TLS verification failed"
        return "could not connect"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the server broke the HTTP protocol"
    if isinstance(error, httpx.ReadError | httpx.WriteError):
        return "the connection was lost"
    return type(error).__name__


def _write(out: IO[bytes], digest: hashlib._Hash, data: bytes) -> None:
    digest.update(data)
    out.write(data)


async def download(
    url: str,
    dest_dir: Path,
    *,
    max_bytes: int,
    allow_ip: Callable[[IPAddress], bool] = is_public_ip,
    resolver: Resolver | None = None,
    max_redirects: int = 5,
    timeout_s: float = 30.0,
    on_progress: Callable[[int], None] | None = None,
) -> FetchResult:
    """Download `url` into `dest_dir` under a sanitised name; see the module docstring.

    `timeout_s` bounds connecting and each wait for data (not the whole transfer, which
    `max_bytes` bounds). Errors: InvalidInput (bad or refused URL, non-2xx, network failure),
    PayloadTooLarge (over `max_bytes`); a partial file is never left behind.
    """
    resolve = resolver or _default_resolver
    dest_dir = Path(dest_dir)
    target = _parse(url)
    first = target
    timeout = httpx.Timeout(timeout_s)
    for hop in range(max_redirects + 1):
        pinned = _pinned(target, await _pinned_address(target, resolve, allow_ip))
        # A fresh client per hop: a pooled connection to one IP must never carry a request
        # meant for another name. No env proxies: a proxy would resolve the name again.
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False
        ) as client:
            request = client.build_request(
                "GET",
                pinned.connect_url,
                headers={
                    "Host": pinned.host_header,
                    "Accept-Encoding": "identity",
                    "User-Agent": "inferd-fetch",
                },
                extensions=pinned.extensions,
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise InvalidInput(f"url: could not download: {short_reason(e)}") from None
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise InvalidInput(
                            f"url: the server answered {response.status_code} without a Location"
                        )
                    if hop == max_redirects:
                        raise InvalidInput(f"url: more than {max_redirects} redirects")
                    target = _parse(urljoin(target.url, location.strip()))
                    continue
                if not 200 <= response.status_code < 300:
                    raise InvalidInput(f"url: the server answered {response.status_code}")
                return await _save(response, target, first, dest_dir, max_bytes, on_progress)
            finally:
                await response.aclose()
    raise InvalidInput(f"url: more than {max_redirects} redirects")  # pragma: no cover


async def _save(
    response: httpx.Response,
    target: _Target,
    first: _Target,
    dest_dir: Path,
    max_bytes: int,
    on_progress: Callable[[int], None] | None,
) -> FetchResult:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"url: the download is over the {max_bytes} byte limit")
    fd, tmp_name = await asyncio.to_thread(_temp_file, dest_dir)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            pending = bytearray()
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    # Counted as it arrives: Content-Length may lie or be absent.
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"url: the download is over the {max_bytes} byte limit"
                        )
                    pending += chunk
                    if len(pending) >= _BUFFER:
                        await asyncio.to_thread(_write, out, digest, bytes(pending))
                        pending.clear()
                    if on_progress is not None:
                        on_progress(size)
            except httpx.HTTPError as e:
                raise InvalidInput(f"url: could not download: {short_reason(e)}") from None
            if pending:
                await asyncio.to_thread(_write, out, digest, bytes(pending))
        filename = (
            _safe_filename(_disposition_filename(response.headers.get("content-disposition")))
            or _safe_filename(unquote(urlsplit(first.url).path))
            or _safe_filename(unquote(urlsplit(target.url).path))
            or "artifact"
        )
        path = await asyncio.to_thread(_claim, tmp, dest_dir, filename)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    content_type = response.headers.get("content-type", "application/octet-stream")[:200]
    # The query is dropped: redirect targets often carry signed credentials.
    final = urlsplit(target.url)._replace(query="").geturl()
    return FetchResult(path, size, digest.hexdigest(), final, filename, content_type)


def _temp_file(dest_dir: Path) -> tuple[int, str]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=".download-", suffix=".part", dir=dest_dir)


def _claim(tmp: Path, dest_dir: Path, filename: str) -> Path:
    """Move the finished download to `filename` in dest_dir without replacing another file."""
    stem, dot, suffix = filename.partition(".")
    for n in range(1000):
        name = filename if n == 0 else f"{stem}-{n}{dot}{suffix}"
        candidate = dest_dir / name
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        os.replace(tmp, candidate)
        return candidate
    raise InvalidInput("url: too many files with the same name in the destination")


__all__ = [
    "FetchResult",
    "IPAddress",
    "PinnedUrl",
    "Resolver",
    "check_url",
    "download",
    "is_public_ip",
    "pin_url",
    "short_reason",
]
