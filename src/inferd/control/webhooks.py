"""Webhooks of async predictions: signed (Standard Webhooks), retried, durable.

A job that ends (or starts, or reports progress, when its owner asked for those events) gets a
`webhook_deliveries` row in the transaction that records it (`JobStore.finish_job`,
`JobStore.job_event`): an outbox, so a delivery is never lost between the job's end and the
POST. This module sends those rows. Each server runs one sender loop: it claims due deliveries
(`WebhookStore.claim_deliveries`: a lease, so two nodes never send one at once and a node that
dies mid-send leaves it to anyone once the lease ends), POSTs them concurrently (at most
`webhooks.concurrency`), and records each attempt. A 2xx answer delivers; anything else (another
status, a redirect, which is never followed, a network error, a timeout) is tried again after an
exponential backoff with full jitter, until `webhooks.max_attempts`, then the delivery is
`failed`. `wake()` sends at once what a job of this server just queued; retries wake the loop
when they are due; deliveries queued by other nodes are found within `webhooks.poll_interval_s`.

Every request is signed with its owner's secret (`webhook-id`, `webhook-timestamp`,
`webhook-signature`; the id is the delivery's, the same on every retry, so receivers can drop
duplicates). During a secret rotation's grace period both secrets sign: the header carries both
`v1,` signatures, space-separated, and a receiver holding either one verifies.

The URL is checked against the same SSRF rules as URL imports (`registry.fetch`) at submission
and again before every attempt (DNS answers change), and the request goes to the checked
address itself (Host header and TLS SNI carry the name): no second resolution to rebind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from standardwebhooks import Webhook

from inferd._version import __version__
from inferd.auth.policy import require
from inferd.control.audit import Actor, Audit
from inferd.core.errors import InferdError, InvalidInput, Unauthenticated
from inferd.core.records import Scope, WebhookDelivery
from inferd.observability.metrics import WebhookMetrics
from inferd.registry.fetch import IPAddress, Resolver, is_public_ip, pin_url, short_reason
from inferd.registry.store import RegistryStore
from inferd.settings import WebhookSettings

log = logging.getLogger("inferd.webhooks")

USER_AGENT = f"inferd/{__version__}"
#: Longest webhook URL accepted.
MAX_URL_CHARS = 2048
#: A sender never sleeps less than this between looks at due deliveries.
_MIN_SLEEP_S = 0.01


# ---- pure parts: the headers and the retry schedule -----------------------------------------


def signed_headers(
    msg_id: str, at: datetime, body: bytes, secrets: Sequence[str], user_agent: str = USER_AGENT
) -> dict[str, str]:
    """The headers of one attempt: Standard Webhooks' `webhook-id`, `webhook-timestamp` (Unix
    seconds) and `webhook-signature` (one `v1,<base64 HMAC-SHA256>` per secret, space-separated:
    during a rotation both the new and the previous secret sign)."""
    if not secrets:
        raise ValueError("at least one secret signs a webhook")
    signatures = " ".join(Webhook(s).sign(msg_id, at, body) for s in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": user_agent,
    }


def backoff_delay(attempts: int, base_s: float, max_s: float, draw: float) -> float:
    """Seconds to wait after `attempts` failed attempts (≥ 1) before the next: full jitter,
    `draw` (uniform in [0, 1)) times min(max_s, base_s · 2^(attempts - 1))."""
    ceiling = min(max_s, base_s * 2.0 ** min(max(attempts, 1) - 1, 64))
    return min(max(draw, 0.0), 1.0) * ceiling


def delivered(code: int | None) -> bool:
    return code is not None and 200 <= code < 300


def _webhook_message(e: InvalidInput) -> str:
    """fetch's refusals name `url`; here the field is `webhook`."""
    return "webhook: " + e.message.removeprefix("url: ")


# ---- the use-case and the sender ------------------------------------------------------------


class Webhooks:
    """Webhook secrets, the URL check of submissions, and this server's delivery sender.

    `resolver` (host, port → addresses) and `clock` (aware UTC now) are injected for tests;
    `draw` gives the jitter (uniform in [0, 1)).
    """

    def __init__(
        self,
        store: RegistryStore,
        audit: Audit,
        settings: WebhookSettings,
        metrics: WebhookMetrics,
        *,
        resolver: Resolver | None = None,
        clock: Callable[[], datetime] | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.audit = audit
        self.settings = settings
        self.metrics = metrics
        self._resolver = resolver
        self._clock = clock or (lambda: datetime.now(UTC))
        self._draw = draw
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._sending: dict[str, asyncio.Task[None]] = {}

    # ---- use-cases -----------------------------------------------------------------------

    async def check_url(self, url: object) -> None:
        """Whether a submission may store this webhook URL: http(s), no credentials in it, and
        a host that resolves to public addresses only (unless `webhooks.allow_private_urls`).
        InvalidInput naming `webhook` otherwise. Checked again before every attempt."""
        if not isinstance(url, str) or not url:
            raise InvalidInput("webhook: must be an http(s) URL")
        if len(url) > MAX_URL_CHARS:
            raise InvalidInput(f"webhook: longer than {MAX_URL_CHARS} characters")
        try:
            await pin_url(url, allow_ip=self._allow_ip(), resolver=self._resolver)
        except InvalidInput as e:
            raise InvalidInput(_webhook_message(e)) from None

    async def secret(self, actor: Actor) -> tuple[str, str | None]:
        """The caller's signing secret (created on first use) and the previous one while a
        rotation's grace period runs."""
        return await self.store.webhook_secret(_owner(actor))

    async def rotate_secret(self, actor: Actor) -> tuple[str, str | None, datetime | None]:
        """A new signing secret for the caller; the previous one keeps signing for
        `webhooks.secret_rotation_grace_s`. Returns (secret, previous, until when)."""
        user_id = _owner(actor)
        grace = timedelta(seconds=self.settings.secret_rotation_grace_s)
        secret, previous = await self.store.rotate_webhook_secret(user_id, grace)
        await self.audit.record(actor, "webhook.secret.rotate", "user", user_id)
        return secret, previous, (self._clock() + grace if previous is not None else None)

    async def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """A job's deliveries, oldest first (the caller has checked access to the job)."""
        return await self.store.list_deliveries(job_id)

    # ---- the sender ----------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (call after queueing one: a job of this server ended)."""
        self._wake.set()

    async def start(self) -> None:
        """Start sending (none with `webhooks.concurrency` 0: another node sends them)."""
        if self.settings.concurrency > 0 and self._loop is None:
            self._wake.set()  # deliveries left pending by the last run: at once
            self._loop = asyncio.create_task(self._run_loop(), name="webhooks")

    async def stop(self) -> None:
        """Stop sending. Attempts in flight are abandoned and their deliveries handed back (due
        at once, for the next sender: a receiver may see one twice, with the same id)."""
        abandoned = [i for i, task in self._sending.items() if not task.done()]
        tasks = [t for t in (self._loop, *self._sending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._sending.clear()
        if abandoned:
            with contextlib.suppress(InferdError):
                await self.store.release_deliveries(abandoned)

    async def _run_loop(self) -> None:
        poll = self.settings.poll_interval_s
        while True:
            self._wake.clear()
            try:
                await self._claim()
                delay = await self._idle_delay()
            except InferdError as e:  # the database is down: try again at the next tick
                log.warning("claiming webhook deliveries failed: %s", e.message)
                delay = poll
            except Exception:
                log.exception("the webhook sender failed; it goes on")
                delay = poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _claim(self) -> None:
        free = self.settings.concurrency - len(self._sending)
        if free <= 0:
            return
        for d in await self.store.claim_deliveries(free, self._lease()):
            self._sending[d.id] = asyncio.create_task(self._send(d), name=f"webhook {d.id}")

    async def _idle_delay(self) -> float:
        """Until the next look: when the earliest pending delivery is due, at most a poll."""
        poll = self.settings.poll_interval_s
        if len(self._sending) >= self.settings.concurrency:
            return poll  # a send that ends wakes the loop
        at = await self.store.next_delivery_at()
        if at is None:
            return poll
        return min(poll, max(_MIN_SLEEP_S, (at - self._clock()).total_seconds()))

    def _lease(self) -> timedelta:
        # longer than an attempt can take (it is bounded by timeout_s), with room for the
        # database writes around it
        return timedelta(seconds=2 * self.settings.timeout_s + 30)

    async def _send(self, d: WebhookDelivery) -> None:
        try:
            await self.attempt(d)
        except InferdError as e:  # the database: the lease runs out, then it is tried again
            log.warning("webhook delivery %s not recorded: %s", d.id, e.message)
        except Exception:
            log.exception("webhook delivery %s failed", d.id)
        finally:
            self._sending.pop(d.id, None)
            self._wake.set()  # a slot is free

    async def attempt(self, d: WebhookDelivery) -> WebhookDelivery:
        """One attempt of a claimed delivery, recorded: delivered, retried later, or failed."""
        s = self.settings
        secret, previous = await self.store.webhook_secret(d.owner_id)
        keys = [secret] if previous is None else [secret, previous]
        started = time.perf_counter()
        code, error = await self._post(d, keys)
        self.metrics.seconds.observe(time.perf_counter() - started)
        attempts = d.attempts + 1
        next_at = None
        if delivered(code):
            outcome = "delivered"
        elif attempts >= s.max_attempts:
            outcome = "failed"
            log.info("webhook delivery %s of job %s failed after %d attempts: %s", d.id,
                     d.job_id, attempts, error)  # fmt: skip
        else:
            outcome = "retry"
            wait = backoff_delay(attempts, s.backoff_base_s, s.backoff_max_s, self._draw())
            next_at = self._clock() + timedelta(seconds=wait)
        done = await self.store.delivery_attempted(d.id, code, error, next_at)
        self.metrics.deliveries.labels(outcome).inc()
        return done

    async def _post(self, d: WebhookDelivery, secrets: Sequence[str]) -> tuple[int | None, str]:
        """POST the delivery once: (the answer's status or None, what went wrong or "")."""
        body = orjson.dumps(d.payload)
        timeout = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout):  # the whole attempt, a slow drip included
                pinned = await pin_url(d.url, allow_ip=self._allow_ip(), resolver=self._resolver)
                headers = signed_headers(d.id, self._clock(), body, secrets)
                headers["host"] = pinned.host_header
                # A fresh client per attempt: a pooled connection to one address must never
                # carry a request meant for another name. No env proxies: they resolve again.
                async with httpx.AsyncClient(timeout=httpx.Timeout(timeout),
                                             follow_redirects=False,
                                             trust_env=False) as client:  # fmt: skip
                    request = client.build_request("POST", pinned.connect_url, content=body,
                                                   headers=headers,
                                                   extensions=pinned.extensions)  # fmt: skip
                    response = await client.send(request, stream=True)
                    await response.aclose()  # the body is not read: only the status counts
        except InvalidInput as e:
            return None, _webhook_message(e)
        except TimeoutError:
            return None, f"timed out after {timeout:g} s"
        except httpx.HTTPError as e:
            return None, short_reason(e)
        code = response.status_code
        if delivered(code):
            return code, ""
        if 300 <= code < 400:
            return code, f"answered {code}: redirects are not followed"
        return code, f"answered {code}"

    def _allow_ip(self) -> Callable[[IPAddress], bool]:
        return (lambda _ip: True) if self.settings.allow_private_urls else is_public_ip


def _owner(actor: Actor) -> str:
    p = actor.principal
    require(p, Scope.INFER)
    if p.user_id is None:
        raise Unauthenticated("a webhook secret belongs to a user: sign in or use a key")
    return p.user_id
