"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a real
`inferd serve` subprocess: sign-in (password, keyboard only, and API key) and sign-out, the
catalog's filters, a member not seeing another member's private model, an API key created
(shown once) and revoked, the jobs page showing an async prediction's result and cancelling a
queued one, the admin pages, a narrow window. Each main screen is saved as a PNG
(`INFERD_CONSOLE_SCREENSHOTS=<dir>` keeps them; docs/images/console/ holds the chosen ones).

Chromium, Playwright and the built console are required where INFERD_TEST_REQUIRE_SERVICES=1
(CI); elsewhere these tests skip, saying what is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd.api.admin.console import built
from tests.conftest import ADMIN, ADMIN_KEY
from tests.e2e.conftest import Process, start_server
from tests.integration.platform import iris_skops

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
SLOW = textwrap.dedent(
    """
    import time

    class Model:
        def infer(self, inputs, parameters):
            time.sleep(float(parameters.get("sleep", 0)))
            return {"Y": inputs["X"] * 2}
    """
)
SLOW_YAML = textwrap.dedent(
    """
    runtime: python
    inputs: [{name: X, datatype: FP32, shape: [-1]}]
    outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
)
#: How long the browser waits for something to show (a real server answers far sooner).
WAIT_MS = 15_000


def _missing(reason: str) -> None:
    if os.environ.get("INFERD_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; INFERD_TEST_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("INFERD_TEST_CHROMIUM") or shutil.which("chromium")
    if path is None:
        _missing("Debian's chromium is not installed (`make test` installs it as root)")
    assert path is not None
    return path


@dataclass
class World:
    server: Process
    http: httpx.Client
    users: dict[str, dict[str, str]]  # username → Authorization header
    shots: Path

    @property
    def url(self) -> str:
        return self.server.url


def _repository(root: Path) -> Path:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "model.py").write_text(SLOW)
    (root / "slow" / "model.yaml").write_text(SLOW_YAML)
    return root


def _member(http: httpx.Client, name: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/register", headers=ADMIN,
                  json={"username": name, "password": PASSWORD})  # fmt: skip
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _model(http: httpx.Client, who: dict[str, str], **fields: Any) -> None:
    r = http.post("/api/v1/models", headers=who, json=fields)
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not built():
        _missing("the console is not built (`make install` builds it where npm is installed)")
    _chromium()
    tmp = tmp_path_factory.mktemp("console")
    shots = Path(os.environ.get("INFERD_CONSOLE_SCREENSHOTS") or tmp / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as env:
        # a registry of its own, and one job at a time so that a second one stays queued
        env.setenv("INFERD_DATA_DIR", str(tmp / "data"))
        env.setenv("INFERD_JOBS__CONCURRENCY", "1")
        # in-flight work gets little time to finish when the server stops after the tests
        env.setenv("INFERD_SHUTDOWN_GRACE_S", "2")
        server = start_server(_repository(tmp / "repo"), tmp / "inferd.log", grpc=False)
    http = httpx.Client(base_url=server.url, timeout=60)
    try:
        alice, bob = _member(http, "alice"), _member(http, "bob")
        _model(http, alice, name="fraud-detector", framework="sklearn",
               task_type="classification", tags=["finance", "tabular"],
               description="Flags card payments that look fraudulent.")  # fmt: skip
        artifact, sample = iris_skops()
        files = {"file": ("model.skops", artifact, "application/octet-stream")}
        r = http.post("/api/v1/models/fraud-detector/versions", headers=alice, files=files,
                      data={"meta": f'{{"sample_input": {_json(sample)}}}'})  # fmt: skip
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text
        _model(http, alice, name="sentiment", framework="onnx", visibility="public",
               task_type="text-classification", tags=["nlp"],
               description="Positive or negative, for short English texts.")  # fmt: skip
        _model(http, bob, name="bobs-draft", framework="onnx", tags=["nlp"])
        yield World(server, http, {"alice": alice, "bob": bob}, shots)
    finally:
        http.close()
        server.proc.terminate()
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


def _json(doc: Any) -> str:
    import orjson

    return orjson.dumps(doc).decode()


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        _missing(f"the playwright package is not installed ({e})")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=[*args, "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, world: World) -> Iterator[Any]:
    """A fresh tab in a fresh profile (nothing remembered from another test), at 1280x800."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  color_scheme="light")  # fmt: skip
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    # a Content-Security-Policy violation is reported on the console: none may happen
    tab.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    yield tab
    context.close()
    assert errors == [], errors


def _expect() -> Any:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    return expect


def shot(world: World, tab: Any, name: str) -> None:
    tab.screenshot(path=str(world.shots / f"{name}.png"))


def sign_in(world: World, tab: Any, username: str, hash_path: str = "") -> None:
    tab.goto(f"{world.url}/console/{hash_path}")
    tab.get_by_label("Username", exact=True).fill(username)
    tab.get_by_label("Password", exact=True).fill(PASSWORD)
    tab.get_by_role("button", name="Sign in").click()
    _expect()(tab.get_by_test_id("whoami")).to_contain_text(username)


# ---- sign-in -------------------------------------------------------------------------------


def test_sign_in_by_keyboard_who_am_i_and_sign_out(world: World, page: Any) -> None:
    expect = _expect()
    r = world.http.get("/", headers={"Accept": "text/html"})  # a browser at the server's root
    assert r.status_code == 307 and r.headers["location"] == "/console/"
    page.goto(world.url + "/")
    assert page.url == world.url + "/console/"
    expect(page.get_by_role("heading", name="Sign in to inferd")).to_be_visible()
    shot(world, page, "sign-in")
    # a wrong password: the server's message, in words
    page.get_by_label("Username", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid username or password")
    # keyboard only: Tab reaches the fields, Enter submits
    page.reload()
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "username":
            break
    else:
        pytest.fail("Tab never reached the username field")
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("whoami")).to_contain_text("alice")
    expect(page.get_by_test_id("whoami")).to_contain_text("member")
    expect(page.get_by_role("link", name="Users")).to_have_count(0)  # admins only
    # the tokens live in memory only: nothing in storage or cookies
    stored = page.evaluate("JSON.stringify([localStorage, sessionStorage, document.cookie])")
    assert "eyJ" not in stored and "token" not in stored.lower(), stored
    assert page.context.cookies() == []
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to inferd")).to_be_visible()
    # a reload after signing in asks again (memory is gone with the page)
    sign_in(world, page, "alice")
    page.reload()
    expect(page.get_by_role("heading", name="Sign in to inferd")).to_be_visible()


# ---- the catalog ---------------------------------------------------------------------------


def _rows(tab: Any) -> list[str]:
    return sorted(tab.locator("table[aria-label=Models] tbody tr[data-model]").evaluate_all(
        "rows => rows.map(r => r.dataset.model)"))  # fmt: skip


def test_catalog_filters_and_a_members_private_model_stays_hidden(world: World, page: Any) -> None:
    expect = _expect()
    sign_in(world, page, "bob")
    table = page.locator("table[aria-label=Models]")
    expect(table.locator("tr[data-model=sentiment]")).to_be_visible()
    # alice's private model is not there for bob; public, repository and his own are
    assert _rows(page) == ["bobs-draft", "sentiment", "slow"]
    expect(table.locator("tr[data-model=slow]")).to_contain_text("ready")
    expect(table.locator("tr[data-model=slow]")).to_contain_text("repository")
    page.get_by_label("Framework").select_option("onnx")
    expect(table.locator("tr[data-model=slow]")).to_have_count(0)
    assert _rows(page) == ["bobs-draft", "sentiment"]
    page.get_by_label("Owner").select_option("mine")
    expect(table.locator("tr[data-model=sentiment]")).to_have_count(0)
    assert _rows(page) == ["bobs-draft"]
    page.get_by_role("button", name="Clear filters").click()
    page.get_by_label("Search").fill("english")  # the description is searched too
    expect(table.locator("tr[data-model=slow]")).to_have_count(0)
    assert _rows(page) == ["sentiment"]
    page.get_by_label("Search").fill("")
    page.get_by_label("Status").select_option("ready")
    expect(table.locator("tr[data-model=sentiment]")).to_have_count(0)
    assert _rows(page) == ["slow"]
    # the address of alice's private model: the server's "not found", in words
    page.goto(f"{world.url}/console/#/models/fraud-detector")
    expect(page.get_by_role("alert")).to_contain_text("not found")
    page.get_by_role("link", name="← Models").click()
    expect(table.locator("tr[data-model=sentiment]")).to_be_visible()


def test_model_page_versions_edit_and_delete(world: World, page: Any) -> None:
    expect = _expect()
    sign_in(world, page, "alice")
    page.get_by_label("Tag").select_option("finance")
    shot(world, page, "catalog-filtered")
    page.get_by_label("Tag").select_option("")
    expect(page.locator("tr[data-model=fraud-detector]")).to_be_visible()
    shot(world, page, "catalog")
    page.get_by_role("link", name="fraud-detector").click()
    expect(page.get_by_role("heading", name="fraud-detector")).to_be_visible()
    versions = page.get_by_role("table", name="Versions")
    expect(versions).to_contain_text("ready")
    expect(versions).to_contain_text("skops")
    sha = world.http.get("/api/v1/models/fraud-detector/versions/1",
                         headers=world.users["alice"]).json()["sha256"]  # fmt: skip
    expect(page.get_by_role("article", name="Version 1")).to_contain_text(sha)
    expect(page.get_by_role("table", name="Inputs")).to_contain_text("FP32")
    expect(page.get_by_role("article", name="Version 1")).to_contain_text('"inputs"')
    shot(world, page, "model")
    # metadata edited through the API
    page.get_by_role("button", name="Edit details").click()
    page.get_by_label("Tags").fill("finance, tabular, payments")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("model-facts")).to_contain_text("payments")
    tags = world.http.get("/api/v1/models/fraud-detector", headers=world.users["alice"])
    assert tags.json()["tags"] == ["finance", "tabular", "payments"]
    # deleting asks first, and needs the name typed
    _model(world.http, world.users["alice"], name="scratch")
    page.goto(f"{world.url}/console/#/models/scratch")
    page.get_by_role("button", name="Delete model").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("button", name="Delete model")).to_be_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    page.get_by_role("button", name="Delete model").click()
    page.get_by_label("Type scratch to confirm").fill("scratch")
    page.get_by_role("dialog").get_by_role("button", name="Delete model").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    gone = world.http.get("/api/v1/models/scratch", headers=world.users["alice"])
    assert gone.status_code == 404


# ---- API keys ------------------------------------------------------------------------------


def test_key_is_shown_once_signs_in_and_is_revoked(world: World, page: Any) -> None:
    expect = _expect()
    sign_in(world, page, "alice", "#/keys")
    page.get_by_label("Name").fill("console-e2e")
    page.get_by_role("checkbox", name=re.compile("^manage")).check()
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-key")
    expect(secret).to_have_text(re.compile(r"^inferd_"))
    key = secret.inner_text()
    expect(page.get_by_role("region", name="New API key")).to_contain_text("shown only this once")
    shot(world, page, "keys")
    me = world.http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["username"] == "alice"
    page.get_by_role("button", name="I have stored it").click()
    expect(page.get_by_test_id("new-key")).to_have_count(0)
    row = page.locator("tr[data-key=console-e2e]")
    expect(row).to_contain_text("active")
    assert key not in page.content()  # listed by its first characters only
    # sign in with the key itself
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").check()
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("whoami")).to_contain_text("API key")
    # revoke it (asked first): it stops working at once, and this sign-in with it ends
    page.goto(f"{world.url}/console/#/keys")
    page.get_by_role("button", name="Revoke console-e2e").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke key").click()
    expect(page.get_by_role("heading", name="Sign in to inferd")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("sign in again")
    r = world.http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
    listed = world.http.get("/api/v1/keys", headers=world.users["alice"]).json()
    assert [k["revoked_at"] is not None for k in listed if k["name"] == "console-e2e"] == [True]


# ---- jobs ----------------------------------------------------------------------------------


def _submit(world: World, x: float, sleep: float = 0) -> str:
    body = {"model": "slow", "input": {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [x]}],
        "parameters": {"sleep": sleep}}}  # fmt: skip
    r = world.http.post("/api/v1/predictions", headers=world.users["alice"], json=body)
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def _wait(world: World, job_id: str, *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = world.http.get(f"/api/v1/predictions/{job_id}",
                                             headers=world.users["alice"]).json()  # fmt: skip
        if job["status"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_jobs_page_shows_a_result_and_cancels_a_queued_job(world: World, page: Any) -> None:
    expect = _expect()
    done = _submit(world, 21)
    assert _wait(world, done, "succeeded", "failed")["status"] == "succeeded"
    running = _submit(world, 1, sleep=8)  # holds the server's one job slot meanwhile
    assert _wait(world, running, "running")["status"] == "running"
    queued = _submit(world, 2)
    try:
        sign_in(world, page, "alice", "#/jobs")
        table = page.get_by_role("table", name="Async predictions")
        expect(table.locator(f'tr[data-job="{queued}"]')).to_contain_text("queued")
        expect(table.locator(f'tr[data-job="{running}"]')).to_contain_text("running")
        finished = table.locator(f'tr[data-job="{done}"]')
        expect(finished).to_contain_text("succeeded")
        finished.get_by_role("button", name="Result").click()
        result = page.get_by_test_id("job-result")
        expect(result).to_contain_text('"outputs"')
        expect(result).to_contain_text("42")  # 21 * 2
        with page.expect_download() as download:
            finished.get_by_role("button", name="Download").click()
        saved = Path(download.value.path()).read_text()
        assert '"model_name": "slow"' in saved and "42" in saved
        shot(world, page, "jobs")
        table.locator(f'tr[data-job="{queued}"]').get_by_role("button", name="Cancel").click()
        expect(page.get_by_role("dialog")).to_contain_text("it will never run")
        page.get_by_role("dialog").get_by_role("button", name="Cancel prediction").click()
        expect(table.locator(f'tr[data-job="{queued}"]')).to_contain_text("cancelled")
        job = _wait(world, queued, "cancelled")
        assert job["status"] == "cancelled" and job["started_at"] is None
        page.get_by_role("link", name="Batch jobs").click()
        expect(page.get_by_role("table", name="Batch jobs")).to_contain_text("No batch jobs")
    finally:
        world.http.post(f"/api/v1/predictions/{running}/cancel", headers=world.users["alice"])


# ---- admins, narrow windows ----------------------------------------------------------------


def test_admin_pages_and_a_narrow_window(world: World, page: Any) -> None:
    expect = _expect()
    page.goto(f"{world.url}/console/#/users")
    page.get_by_label("API key").check()
    page.get_by_label("Key", exact=True).fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    users = page.get_by_role("table", name="Users")
    expect(users.locator("tr[data-user=bob]")).to_contain_text("member")
    users.get_by_role("button", name="Edit bob").click()
    page.get_by_label("Trusted: may upload formats that run code (pickle, Python)").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("User bob changed")
    expect(users.locator("tr[data-user=bob]")).to_contain_text("yes")
    shot(world, page, "users")
    page.get_by_role("link", name="Audit log").click()
    audit = page.get_by_role("table", name="Audit log")
    expect(audit).to_contain_text("user.update")
    shot(world, page, "audit")
    # the catalog at phone width, in the dark theme: nothing wider than the window
    page.set_viewport_size({"width": 400, "height": 800})
    page.get_by_role("link", name="Models").click()
    page.get_by_role("button", name="Switch colour theme").click()
    expect(page.locator("tr[data-model=fraud-detector]")).to_be_visible()  # admins see all
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    shot(world, page, "catalog-narrow-dark")
