"""Bad management input is a 400 naming the field, never a 500: schemathesis against the live
server's own /openapi.json as an admin (no 5xx on any input, every documented answer matches its
schema), and the cases it found, kept as plain requests.

Path parameters point at real objects the fixture made (a member, a model with a ready version), so
bodies reach the use-cases behind the 404 checks. DELETE operations get names that do not exist:
deleting the fixture's model or version midway would turn every later operation into a 404 and
hide what it should test. The admin's own user and key are never named (ids are random), so the
fuzzer cannot lock the test out.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import ADMIN, ADMIN_KEY, EXAMPLES
from tests.integration.platform import Platform

#: Examples per operation in the fuzzing phase (the coverage phase adds its boundary cases).
MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("fuzz") / "data").start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def targets(platform: Platform) -> dict[str, Any]:
    """Objects the path parameters name: a member, and a model with one ready version."""
    http = platform.http
    platform.user("fuzzmember")
    users = http.get("/api/v1/users", headers=ADMIN).json()
    member = next(u for u in users if u["username"] == "fuzzmember")
    r = http.post("/api/v1/models", headers=ADMIN, json={"name": "fuzzed"})
    assert r.status_code == 201, r.text
    onnx = (EXAMPLES / "simple" / "1" / "model.onnx").read_bytes()
    files = {"file": ("model.onnx", io.BytesIO(onnx), "application/octet-stream")}
    r = http.post("/api/v1/models/fuzzed/versions", headers=ADMIN, files=files)
    assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    return {"user_id": member["id"], "name": "fuzzed", "version": 1}


@pytest.fixture(scope="module")
def api(platform: Platform, targets: dict[str, Any]) -> schemathesis.BaseSchema:
    assert platform.server is not None
    gone = {"name": "fuzz-gone", "version": 7, "key_id": "gone", "deployment_id": "gone"}
    generation = {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"}
    delete = {"include-method": "DELETE", "parameters": {f"path.{k}": v for k, v in gone.items()}}
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {ADMIN_KEY}"},
            "generation": generation,
            "parameters": {f"path.{k}": v for k, v in targets.items()},
            "operations": [delete],
        }
    )
    return schemathesis.openapi.from_url(f"{platform.server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32 reads and rewrites `node._nodeid`, an attribute pytest 9 no longer has;
    # giving it one keeps the plugin working (the value only labels its subtests).
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_no_server_error_and_answers_match_the_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])


#: (path template, body, the field the 400 must name). The first two are what schemathesis found.
BAD_PATCHES = [
    ("/api/v1/users/{user_id}", {"disabled": 0, "role": None, "trusted": None, "rpm_limit": 1},
     "role"),
    ("/api/v1/models/{name}", {"framework": "\u00a5", "description": None, "tags": None},
     "description"),
    ("/api/v1/users/{user_id}", {"trusted": None}, "trusted"),
    ("/api/v1/users/{user_id}", {"disabled": 0}, "disabled"),
    ("/api/v1/users/{user_id}", {"rpm_limit": "5"}, "rpm_limit"),
    ("/api/v1/users/{user_id}", {"concurrency_limit": 2**40}, "concurrency_limit"),
    ("/api/v1/models/{name}", {"tags": None}, "tags"),
    ("/api/v1/models/{name}", {"visibility": None}, "visibility"),
    ("/api/v1/models/{name}", {"tags": [1]}, "tags.0"),
    ("/api/v1/models/{name}", {"task_type": "a\x00b"}, "task_type"),
]  # fmt: skip


def test_null_and_wrong_types_are_400_naming_the_field(
    platform: Platform, targets: dict[str, Any]
) -> None:
    http = platform.http
    for template, body, field in BAD_PATCHES:
        path = template.format(**targets)
        before = http.get(path if "models" in path else "/api/v1/users", headers=ADMIN).json()
        r = http.patch(path, headers=ADMIN, json=body)
        assert r.status_code == 400, (path, body, r.status_code, r.text)
        assert r.json()["error"].startswith(f"{field}: "), (body, r.text)
        after = http.get(path if "models" in path else "/api/v1/users", headers=ADMIN).json()
        assert after == before, body  # nothing half-applied
    # null is a value for a quota: back to the server default
    r = http.patch(f"/api/v1/users/{targets['user_id']}", headers=ADMIN, json={"rpm_limit": None})
    assert r.status_code == 200 and r.json()["rpm_limit"] is None, r.text
    r = http.post("/api/v1/deployments", headers=ADMIN, json={"model": "fuzzed", "version": True})
    assert r.status_code == 400 and r.json()["error"].startswith("version: "), r.text


def test_nul_in_any_parameter_is_400_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL cannot compare text holding NUL: refused before any lookup, naming where."""
    p = Platform(tmp_path / "data", database_url=postgres_url).start()
    try:
        http = p.http
        for method, path, body, field in [
            ("GET", "/api/v1/models/a%00b", None, "name"),
            ("PATCH", "/api/v1/users/a%00b", {"trusted": True}, "user_id"),
            ("GET", "/api/v1/audit?action=a%00b", None, "action"),
            ("DELETE", "/api/v1/keys/a%00b", None, "key_id"),
            ("GET", "/api/v1/deployments/a%00b", None, "deployment_id"),
            ("POST", "/api/v1/deployments", {"model": "a\x00b"}, "model"),
            ("POST", "/api/v1/keys", {"name": "k", "user_id": "a\x00b"}, "user_id"),
            ("POST", "/api/v1/auth/login", {"username": "a\x00b", "password": "x"}, "username"),
        ]:
            r = http.request(method, path, headers=ADMIN, json=body)
            assert r.status_code == 400, (method, path, r.status_code, r.text)
            assert r.json()["error"] == f"{field}: must not contain NUL characters", r.text
    finally:
        p.stop()
