"""Webhooks of async predictions against a real receiver on 127.0.0.1 that verifies every request
with the `standardwebhooks` library, on SQLite and PostgreSQL: delivered and signed (with both
secrets during a rotation), retried with the same webhook-id and growing delays, failed after the
last attempt, redirects not followed, private addresses refused at send time, pending deliveries
sent after a restart; the store's claims and leases; the management API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook, WebhookVerificationError

from inferd.control.audit import Audit
from inferd.control.webhooks import USER_AGENT, Webhooks
from inferd.core.records import DeliveryStatus, Job, JobStatus, WebhookDelivery
from inferd.observability.metrics import WebhookMetrics
from inferd.registry.db import Database, sqlite_url
from inferd.registry.store import RegistryStore
from inferd.settings import WebhookSettings
from tests.conftest import ADMIN, ADMIN_KEY
from tests.integration.platform import Platform
from tests.integration.test_predictions import repository, slow_input, submit, wait

OWNER = "owner1"


# ---- the receiver -----------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    #: which of the receiver's secrets verified it (Webhook(secret).verify)
    verified: list[bool]


@dataclass
class Receiver:
    """POST /ok → 200; /flaky/N → 500 N times, then 200; /down → 500; /redirect → 302 to /ok;
    /slow → 200 after a second. A request no secret verifies gets 401."""

    port: int = 0
    secrets: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def on(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


def _handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = []
            for secret in rx.secrets:
                try:
                    Webhook(secret).verify(body, headers)
                    verified.append(True)
                except WebhookVerificationError:
                    verified.append(False)
            with rx.lock:
                seen = sum(1 for h in rx.hits if h.path == self.path)
                rx.hits.append(Hit(self.path, headers, body, time.monotonic(), verified))
            if not any(verified):
                self.answer(401)
            elif self.path.startswith("/flaky/"):
                self.answer(500 if seen < int(self.path.rsplit("/", 1)[1]) else 200)
            elif self.path == "/down":
                self.answer(500)
            elif self.path == "/redirect":
                self.answer(302, Location=rx.url("/ok"))
            elif self.path == "/slow":
                time.sleep(1.0)
                self.answer(200)
            else:
                self.answer(200)

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rx))
    server.daemon_threads = True
    rx.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rx
    server.shutdown()
    server.server_close()


# ---- the database, jobs, the sender --------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "registry.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[RegistryStore]:
    db = Database(database_url)
    await db.migrate()
    yield RegistryStore(db)
    await db.close()


def _event(name: str, job: Job) -> dict[str, Any]:
    return {"type": f"prediction.{name}", "timestamp": datetime.now(UTC).isoformat(),
            "data": {"id": job.id, "status": str(job.status), "result": job.result}}  # fmt: skip


async def ended_job(store: RegistryStore, url: str, owner: str = OWNER) -> Job:
    """A job with a webhook that ran and succeeded: its `completed` delivery is queued."""
    job, _ = await store.create_job(owner, "m", None, {"inputs": []}, 0, 3, None, webhook=url)
    claimed = await store.claim_job("node-a", timedelta(seconds=60))
    assert claimed is not None and claimed.id == job.id
    return await store.finish_job(job.id, JobStatus.SUCCEEDED, {"outputs": [1]}, event=_event)


def sender(store: RegistryStore, draw: Callable[[], float] = lambda: 1.0, **settings: Any
           ) -> Webhooks:  # fmt: skip
    """A sender allowed to reach the loopback receiver, with quick retries."""
    s = {"allow_private_urls": True, "backoff_base_s": 0.05, "backoff_max_s": 1.0,
         "max_attempts": 3, "timeout_s": 5.0, "poll_interval_s": 0.5, **settings}  # fmt: skip
    return Webhooks(store, Audit(store), WebhookSettings(**s),
                    WebhookMetrics(CollectorRegistry()), draw=draw)  # fmt: skip


async def settled(store: RegistryStore, job_id: str, timeout: float = 20) -> WebhookDelivery:
    """The job's one delivery once it is delivered or failed."""
    deadline = time.monotonic() + timeout
    while True:
        (d,) = await store.list_deliveries(job_id)
        if d.status != DeliveryStatus.PENDING or time.monotonic() > deadline:
            return d
        await asyncio.sleep(0.02)


def outcomes(w: Webhooks) -> dict[str, float]:
    counter = w.metrics.deliveries
    return {o: counter.labels(o)._value.get() for o in ("delivered", "retry", "failed")}


# ---- sending ----------------------------------------------------------------------------------


async def test_a_completed_job_is_delivered_signed(
    store: RegistryStore, receiver: Receiver
) -> None:
    secret, previous = await store.webhook_secret(OWNER)
    assert previous is None and secret == (await store.webhook_secret(OWNER))[0]
    receiver.secrets = [secret]
    w = sender(store)
    await w.start()
    try:
        job = await ended_job(store, receiver.url("/ok"))
        w.wake()
        d = await settled(store, job.id)
    finally:
        await w.stop()
    assert d.status == DeliveryStatus.DELIVERED and d.attempts == 1 and d.last_code == 200
    assert d.last_error == "" and d.finished_at is not None and d.event == "completed"
    (hit,) = receiver.on("/ok")
    assert hit.verified == [True]
    assert hit.headers["webhook-id"] == d.id
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["user-agent"] == USER_AGENT
    assert hit.headers["host"] == f"127.0.0.1:{receiver.port}"
    doc = Webhook(secret).verify(hit.body, hit.headers)
    assert doc["type"] == "prediction.completed" and doc["data"]["id"] == job.id
    assert doc["data"]["status"] == "succeeded" and doc["data"]["result"] == {"outputs": [1]}
    assert outcomes(w) == {"delivered": 1, "retry": 0, "failed": 0}
    assert w.metrics.seconds._sum.get() > 0


async def test_retries_keep_the_id_and_wait_longer_each_time(
    store: RegistryStore, receiver: Receiver
) -> None:
    receiver.secrets = [(await store.webhook_secret(OWNER))[0]]
    # the draw at the top of the jitter range: the waits are the ceilings, 0.2 s then 0.4 s
    w = sender(store, backoff_base_s=0.2, max_attempts=5)
    await w.start()
    try:
        job = await ended_job(store, receiver.url("/flaky/2"))
        w.wake()
        d = await settled(store, job.id)
    finally:
        await w.stop()
    assert d.status == DeliveryStatus.DELIVERED and d.attempts == 3 and d.last_code == 200
    hits = receiver.on("/flaky/2")
    assert len(hits) == 3 and all(h.verified == [True] for h in hits)
    assert {h.headers["webhook-id"] for h in hits} == {d.id}
    first, second = hits[1].at - hits[0].at, hits[2].at - hits[1].at
    assert first >= 0.18 and second >= 0.36 and second > first, (first, second)
    assert outcomes(w) == {"delivered": 1, "retry": 2, "failed": 0}


async def test_always_500_fails_after_the_last_attempt(
    store: RegistryStore, receiver: Receiver
) -> None:
    receiver.secrets = [(await store.webhook_secret(OWNER))[0]]
    w = sender(store, max_attempts=3)
    await w.start()
    try:
        job = await ended_job(store, receiver.url("/down"))
        w.wake()
        d = await settled(store, job.id)
    finally:
        await w.stop()
    assert d.status == DeliveryStatus.FAILED and d.attempts == 3
    assert d.last_code == 500 and d.last_error == "answered 500" and d.finished_at is not None
    assert len(receiver.on("/down")) == 3
    assert outcomes(w) == {"delivered": 0, "retry": 2, "failed": 1}
    # the job itself is unchanged by its webhook
    assert (await store.get_job(job.id)).status == JobStatus.SUCCEEDED


async def test_a_redirect_is_not_followed(store: RegistryStore, receiver: Receiver) -> None:
    receiver.secrets = [(await store.webhook_secret(OWNER))[0]]
    w = sender(store, max_attempts=1)
    await w.start()
    try:
        job = await ended_job(store, receiver.url("/redirect"))
        w.wake()
        d = await settled(store, job.id)
    finally:
        await w.stop()
    assert d.status == DeliveryStatus.FAILED and d.last_code == 302
    assert "redirects are not followed" in d.last_error
    assert len(receiver.on("/redirect")) == 1 and receiver.on("/ok") == []


async def test_a_private_address_is_refused_at_send_time(
    store: RegistryStore, receiver: Receiver
) -> None:
    """A URL stored when it was allowed (or whose name now resolves elsewhere) is checked again
    before each attempt: nothing reaches the loopback receiver."""
    receiver.secrets = [(await store.webhook_secret(OWNER))[0]]
    w = sender(store, allow_private_urls=False, max_attempts=2)
    await w.start()
    try:
        job = await ended_job(store, receiver.url("/ok"))
        w.wake()
        d = await settled(store, job.id)
    finally:
        await w.stop()
    assert d.status == DeliveryStatus.FAILED and d.attempts == 2 and d.last_code is None
    assert d.last_error.startswith("webhook: ") and "not allowed" in d.last_error
    assert receiver.hits == []


async def test_during_a_rotation_both_secrets_sign(
    store: RegistryStore, receiver: Receiver
) -> None:
    old, _ = await store.webhook_secret(OWNER)
    new, previous = await store.rotate_webhook_secret(OWNER, timedelta(hours=1))
    assert previous == old and new != old and new.startswith("whsec_")
    assert await store.webhook_secret(OWNER) == (new, old)
    receiver.secrets = [old, new]
    w = sender(store)
    await w.start()
    try:
        job = await ended_job(store, receiver.url("/ok"))
        w.wake()
        assert (await settled(store, job.id)).status == DeliveryStatus.DELIVERED
        (hit,) = receiver.on("/ok")
        assert hit.verified == [True, True]  # a receiver holding either one verifies
        assert len(hit.headers["webhook-signature"].split(" ")) == 2
        # with no grace, the replaced secret stops signing at once
        newest, previous = await store.rotate_webhook_secret(OWNER, timedelta(0))
        assert previous is None
        receiver.secrets = [new, newest]
        job = await ended_job(store, receiver.url("/ok"))
        w.wake()
        assert (await settled(store, job.id)).status == DeliveryStatus.DELIVERED
        assert receiver.on("/ok")[1].verified == [False, True]
    finally:
        await w.stop()


async def test_pending_deliveries_survive_a_restart(database_url: str, receiver: Receiver) -> None:
    db = Database(database_url)
    await db.migrate()
    store = RegistryStore(db)
    receiver.secrets = [(await store.webhook_secret(OWNER))[0]]
    # the first sender: one attempt answered 500 (a retry is due later), one cut off mid-send
    first = sender(store, backoff_base_s=0.5, max_attempts=5)
    await first.start()
    flaky = await ended_job(store, receiver.url("/flaky/1"))
    first.wake()
    deadline = time.monotonic() + 10
    while len(receiver.on("/flaky/1")) < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    slow = await ended_job(store, receiver.url("/slow"))
    first.wake()
    while not receiver.on("/slow") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await first.stop()  # the /slow attempt is abandoned and handed back
    queued = await ended_job(store, receiver.url("/ok"))  # while no sender runs
    await db.close()

    db = Database(database_url)
    store = RegistryStore(db)
    second = sender(store, backoff_base_s=0.5, max_attempts=5)
    started = time.monotonic()
    await second.start()
    try:
        done = [await settled(store, j.id) for j in (flaky, slow, queued)]
    finally:
        await second.stop()
        await db.close()
    assert all(d.status == DeliveryStatus.DELIVERED for d in done), done
    assert [d.attempts for d in done] == [2, 1, 1]  # the abandoned try was not recorded
    # handed back, not left to its lease (2 * timeout_s + 30 s)
    assert time.monotonic() - started < 10
    assert {h.headers["webhook-id"] for h in receiver.on("/flaky/1")} == {done[0].id}
    assert {h.headers["webhook-id"] for h in receiver.on("/slow")} == {done[1].id}


# ---- the store ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_claims_lease_and_order(database_url: str) -> None:
    clock = FakeClock()
    db = Database(database_url)
    await db.migrate()
    store = RegistryStore(db, clock=clock)
    try:
        jobs = []
        for _ in range(3):
            jobs.append(await ended_job(store, "https://hooks.example.com/x"))
            clock.now += timedelta(seconds=1)
        lease = timedelta(seconds=30)
        first = await store.claim_deliveries(2, lease)
        assert [d.job_id for d in first] == [j.id for j in jobs[:2]]  # oldest first
        (third,) = await store.claim_deliveries(5, lease)
        assert third.job_id == jobs[2].id
        assert await store.claim_deliveries(5, lease) == []  # all held
        assert await store.next_delivery_at() == clock.now + lease
        clock.now += lease  # a sender died: the leases ran out, anyone sends them again
        again = await store.claim_deliveries(5, lease)
        assert sorted(d.id for d in again) == sorted(d.id for d in [*first, third])
        assert all(d.attempts == 0 for d in again)

        d = first[0]
        retry_at = clock.now + timedelta(seconds=5)
        after = await store.delivery_attempted(d.id, 503, "answered 503", retry_at)
        assert (after.status, after.attempts, after.last_code) == (DeliveryStatus.PENDING, 1, 503)
        assert after.next_at == retry_at
        ok = await store.delivery_attempted(d.id, 204, "", None)
        assert ok.status == DeliveryStatus.DELIVERED and ok.finished_at == clock.now
        # an ended delivery keeps its end
        late = await store.delivery_attempted(d.id, 500, "late", None)
        assert late.status == DeliveryStatus.DELIVERED and late.attempts == 2
        failed = await store.delivery_attempted(first[1].id, None, "timed out", None)
        assert failed.status == DeliveryStatus.FAILED and failed.last_error == "timed out"

        # handed back: due now
        assert await store.release_deliveries([third.id, d.id]) == 1
        (released,) = await store.claim_deliveries(5, lease)
        assert released.id == third.id

        assert [x.id for x in await store.list_deliveries(jobs[0].id)] == [d.id]
        assert len(await store.list_deliveries(jobs[2].id)) == 1
    finally:
        await db.close()


async def test_first_use_creates_one_secret_under_concurrency(store: RegistryStore) -> None:
    got = await asyncio.gather(*(store.webhook_secret("racer") for _ in range(8)))
    assert len({s for s, _ in got}) == 1
    # rotating a user that never had one makes one
    secret, previous = await store.rotate_webhook_secret("fresh", timedelta(hours=1))
    assert previous is None and await store.webhook_secret("fresh") == (secret, None)


# ---- the API ----------------------------------------------------------------------------------


def test_the_api_secret_rotation_and_deliveries(tmp_path: Path) -> None:
    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"),
                 webhooks={"secret_rotation_grace_s": 3600})  # fmt: skip
    p.start()
    try:
        alice, bob = p.user("alice"), p.user("bob")
        http = p.http
        assert http.get("/api/v1/webhooks/secret").status_code == 401
        first = http.get("/api/v1/webhooks/secret", headers=alice).json()
        assert first["secret"].startswith("whsec_") and first["previous"] is None
        assert http.get("/api/v1/webhooks/secret", headers=alice).json() == first
        assert http.get("/api/v1/webhooks/secret", headers=bob).json()["secret"] != first["secret"]
        rotated = http.post("/api/v1/webhooks/secret/rotate", headers=alice).json()
        assert rotated["previous"] == first["secret"] and rotated["secret"] != first["secret"]
        until = datetime.fromisoformat(rotated["previous_until"])
        assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
        now = http.get("/api/v1/webhooks/secret", headers=alice).json()
        assert (now["secret"], now["previous"]) == (rotated["secret"], first["secret"])
        audit = http.get("/api/v1/audit", headers=ADMIN,
                         params={"action": "webhook.secret.rotate"}).json()  # fmt: skip
        assert len(audit) == 1 and audit[0]["actor"] == "alice"

        job = submit(p, alice, {"model": "slow", "input": slow_input(1.0)}).json()
        assert "deliveries" not in wait(p, alice, job["id"], ("succeeded",))  # no webhook
        r = http.get(f"/api/v1/predictions/{job['id']}/deliveries", headers=alice)
        assert r.status_code == 200 and r.json() == []
        r = http.get(f"/api/v1/predictions/{job['id']}/deliveries", headers=bob)
        assert r.status_code == 404
        assert "inferd_webhook_send_seconds" in http.get("/metrics", headers=ADMIN).text
    finally:
        p.stop()


def test_the_sdk_and_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from inferd.cli.main import cli
    from inferd.client import Client

    p = Platform(tmp_path / "data").start()
    try:
        assert p.server is not None
        with Client(p.server.url, api_key=ADMIN_KEY) as c:
            secret = c.webhook_secret()["secret"]
            rotated = c.rotate_webhook_secret()
            assert rotated["previous"] == secret
        env = {"INFERD_URL": p.server.url, "INFERD_API_KEY": ADMIN_KEY}
        out = CliRunner().invoke(cli, ["webhooks", "secret"], env=env)
        assert out.exit_code == 0, out.output
        assert out.output.strip().splitlines()[0] == rotated["secret"]
        out = CliRunner().invoke(cli, ["webhooks", "secret", "--rotate", "--json"], env=env)
        assert out.exit_code == 0, out.output
        assert '"previous"' in out.output and rotated["secret"] in out.output
    finally:
        p.stop()


# ---- end to end: POST /api/v1/predictions with a webhook -------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def server_database(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def _deliveries(p: Platform, headers: dict[str, str], job_id: str, timeout: float = 30
                ) -> list[dict[str, Any]]:  # fmt: skip
    """The job's deliveries once none is pending (GET /api/v1/predictions/{id}/deliveries)."""
    deadline = time.monotonic() + timeout
    while True:
        r = p.http.get(f"/api/v1/predictions/{job_id}/deliveries", headers=headers)
        assert r.status_code == 200, r.text
        ds = r.json()
        if (ds and all(d["status"] != "pending" for d in ds)) or time.monotonic() > deadline:
            return ds
        time.sleep(0.05)


def test_predictions_tell_their_webhook(tmp_path: Path, receiver: Receiver,
                                        server_database: str | None) -> None:  # fmt: skip
    p = Platform(tmp_path / "data", server_database,
                 model_repository=repository(tmp_path / "repo"),
                 webhooks={"allow_private_urls": True, "backoff_base_s": 0.05,
                           "max_attempts": 3})  # fmt: skip
    p.start()
    try:
        alice = p.user("alice")
        secret = p.http.get("/api/v1/webhooks/secret", headers=alice).json()["secret"]
        receiver.secrets = [secret]
        ok = submit(p, alice, {"model": "slow", "input": slow_input(2.0),
                               "webhook": receiver.url("/ok"),
                               "webhook_events": ["started"]})  # fmt: skip
        flaky = submit(p, alice, {"model": "slow", "input": slow_input(3.0),
                                  "webhook": receiver.url("/flaky/2")})  # fmt: skip
        down = submit(p, alice, {"model": "slow", "input": slow_input(4.0),
                                 "webhook": receiver.url("/down")})  # fmt: skip
        assert ok.status_code == flaky.status_code == down.status_code == 202, ok.text

        job = ok.json()
        assert wait(p, alice, job["id"], ("succeeded", "failed"))["status"] == "succeeded"
        ds = _deliveries(p, alice, job["id"])
        assert [(d["event"], d["status"], d["attempts"]) for d in ds] == [
            ("started", "delivered", 1), ("completed", "delivered", 1)]  # fmt: skip
        hits = receiver.on("/ok")
        assert len(hits) == 2 and all(h.verified == [True] for h in hits)
        by_type = {Webhook(secret).verify(h.body, h.headers)["type"]: h for h in hits}
        assert set(by_type) == {"prediction.started", "prediction.completed"}
        done = Webhook(secret).verify(by_type["prediction.completed"].body,
                                      by_type["prediction.completed"].headers)  # fmt: skip
        assert done["data"]["id"] == job["id"] and done["data"]["status"] == "succeeded"
        assert done["data"]["result"]["outputs"][0]["data"] == [4.0]
        assert by_type["prediction.completed"].headers["webhook-id"] == ds[1]["id"]
        shown = p.http.get(f"/api/v1/predictions/{job['id']}", headers=alice).json()
        assert [d["id"] for d in shown["deliveries"]] == [d["id"] for d in ds]

        (d,) = _deliveries(p, alice, flaky.json()["id"])
        assert (d["status"], d["attempts"], d["last_code"]) == ("delivered", 3, 200)
        assert {h.headers["webhook-id"] for h in receiver.on("/flaky/2")} == {d["id"]}
        (d,) = _deliveries(p, alice, down.json()["id"])
        assert (d["status"], d["attempts"], d["last_code"]) == ("failed", 3, 500)
        assert d["last_error"] == "answered 500" and d["finished_at"] is not None
        assert d["next_at"] is None

        text = p.http.get("/metrics", headers=ADMIN).text
        # one per attempt: started, completed, flaky's third; flaky's and down's first two
        assert 'inferd_webhook_deliveries_total{outcome="delivered"} 3.0' in text
        assert 'inferd_webhook_deliveries_total{outcome="retry"} 4.0' in text
        assert 'inferd_webhook_deliveries_total{outcome="failed"} 1.0' in text
    finally:
        p.stop()


def test_webhook_urls_that_reach_inside_are_refused(tmp_path: Path, receiver: Receiver) -> None:
    p = Platform(tmp_path / "data", model_repository=repository(tmp_path / "repo"))
    p.start()
    try:
        alice = p.user("alice")
        for url in (receiver.url("/ok"), "http://localhost:8000/x", "http://10.0.0.1/x",
                    "http://169.254.169.254/latest/meta-data/", "http://[::1]/x",
                    "ftp://93.184.216.34/x", "http://user:pw@93.184.216.34/x"):  # fmt: skip
            r = submit(p, alice, {"model": "slow", "input": slow_input(1.0), "webhook": url})
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"].startswith("webhook: "), r.text
        assert receiver.hits == []
        assert p.http.get("/api/v1/predictions", headers=alice).json() == []
    finally:
        p.stop()
