"""Webhooks without a network: the retry schedule, the signed headers (checked with the
`standardwebhooks` library a receiver uses), secrets, and the URL rule with an injected
resolver."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook, WebhookVerificationError

from inferd.control.webhooks import USER_AGENT, Webhooks, backoff_delay, signed_headers
from inferd.core.errors import InvalidInput
from inferd.observability.metrics import WebhookMetrics
from inferd.registry.webhook_store import new_webhook_secret
from inferd.settings import WebhookSettings

BODY = b'{"type":"prediction.completed","data":{"id":"j1","status":"succeeded"}}'


# ---- the retry schedule ---------------------------------------------------------------------


def test_backoff_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    ceilings = [backoff_delay(n, 1.0, 600.0, 1.0) for n in range(1, 13)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]


def test_backoff_is_full_jitter_below_the_ceiling() -> None:
    assert backoff_delay(3, 1.0, 600.0, 0.0) == 0.0
    assert backoff_delay(3, 1.0, 600.0, 0.5) == 2.0
    assert backoff_delay(4, 0.05, 10.0, 0.25) == pytest.approx(0.1)
    # out-of-range draws and attempt counts are clamped, huge counts do not overflow
    assert backoff_delay(2, 1.0, 600.0, 7.0) == 2.0
    assert backoff_delay(0, 1.0, 600.0, 1.0) == 1.0
    assert backoff_delay(10_000, 1.0, 600.0, 1.0) == 600.0


# ---- signing ----------------------------------------------------------------------------------


def test_secrets_have_the_standard_webhooks_format() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_webhook_secret() != secret


def test_headers_verify_with_the_standard_webhooks_library() -> None:
    secret = new_webhook_secret()
    at = datetime.now(UTC)
    headers = signed_headers("msg_1", at, BODY, [secret])
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT and USER_AGENT.startswith("inferd/")
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "prediction.completed", "data": {"id": "j1", "status": "succeeded"}}  # fmt: skip


def test_two_secrets_sign_and_either_verifies() -> None:
    new, old, other = new_webhook_secret(), new_webhook_secret(), new_webhook_secret()
    headers = signed_headers("msg_2", datetime.now(UTC), BODY, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)


def test_a_changed_body_id_or_timestamp_does_not_verify() -> None:
    secret = new_webhook_secret()
    at = datetime.now(UTC)
    headers = signed_headers("msg_3", at, BODY, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_4"})
    with pytest.raises(WebhookVerificationError):
        later = str(int(at.timestamp()) + 1)
        Webhook(secret).verify(BODY, {**headers, "webhook-timestamp": later})
    with pytest.raises(ValueError):
        signed_headers("msg_5", at, BODY, [])


# ---- the URL rule -------------------------------------------------------------------------------


def _webhooks(resolves_to: list[str] | None = None, **settings: Any) -> Webhooks:
    async def resolver(host: str, port: int) -> list[str]:
        if resolves_to is None:
            raise OSError("no such host")
        return resolves_to

    store: Any = None  # check_url touches neither the database nor the audit log
    return Webhooks(store, store, WebhookSettings(**settings),
                    WebhookMetrics(CollectorRegistry()), resolver=resolver)  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost.localdomain.test/hook",  # resolves to a private address below
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://0x7f000001/hook",
        "https://10.1.2.3/hook",
        "http://192.168.1.10/hook",
    ],
)
async def test_private_loopback_and_metadata_addresses_are_refused(url: str) -> None:
    w = _webhooks(["10.0.0.7"])
    with pytest.raises(InvalidInput) as e:
        await w.check_url(url)
    assert e.value.message.startswith("webhook: ")
    assert "not allowed" in e.value.message


async def test_a_name_is_refused_when_any_of_its_addresses_is_private() -> None:
    with pytest.raises(InvalidInput, match=r"^webhook: 'hooks\.example\.com' is not allowed"):
        await _webhooks(["93.184.216.34", "127.0.0.1"]).check_url("https://hooks.example.com/x")
    await _webhooks(["93.184.216.34"]).check_url("https://hooks.example.com/x")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://93.184.216.34/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pw@93.184.216.34/x", "credentials"),
        ("", "must be an http(s) URL"),
        (42, "must be an http(s) URL"),
        ("http://93.184.216.34/" + "a" * 2100, "longer than 2048"),
        ("http://nowhere.invalid/x", "could not resolve"),
    ],
)
async def test_bad_urls_name_the_webhook_field(url: Any, says: str) -> None:
    with pytest.raises(InvalidInput) as e:
        await _webhooks(None).check_url(url)
    assert e.value.message.startswith("webhook: ") and says in e.value.message


async def test_private_urls_pass_when_the_operator_allows_them() -> None:
    w = _webhooks(["10.0.0.7"], allow_private_urls=True)
    await w.check_url("http://127.0.0.1:9000/hook")
    await w.check_url("http://receiver.internal/hook")
