"""Authorization everywhere: every route and RPC has a policy, and the user x object x verb
matrix leaks nothing (REST and gRPC). Forged or revoked credentials get 401."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fastapi.routing import APIRoute
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inferd.api.admin.batches import router as batch_router
from inferd.api.admin.policy import POLICIES
from inferd.api.admin.predictions import router as predictions_router
from inferd.api.admin.routes import router
from inferd.api.dataplane import POLICY
from inferd.api.grpc.servicer import OPERATION as GRPC_OPERATION
from inferd.api.http.body import HttpLimits
from inferd.api.http.routes import HOT_ROUTES, OPENAI_ROUTES, data_plane_router
from inferd.api.http.routes import OPERATION as HTTP_OPERATION
from inferd.api.http.websocket import OPERATION as SOCKET_OPERATION
from tests.conftest import ADMIN
from tests.integration.platform import Platform, iris_skops

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Alice owns a private deployed model; Bob is another member."""
    p = Platform(tmp_path_factory.mktemp("access") / "data").start()
    http = p.http
    alice, bob = p.user("alice"), p.user("bobby")
    artifact, sample = iris_skops()
    assert http.post("/api/v1/models", headers=alice, json={"name": "secret"}).status_code == 201
    assert p.upload(alice, "secret", artifact, {"sample_input": sample}).status_code == 201
    dep = http.post("/api/v1/deployments", headers=alice, json={"model": "secret"}).json()
    assert p.wait_deployment(alice, dep["id"])["status"] == "ready"
    keys = {}
    for scope in ("infer", "manage"):
        k = http.post("/api/v1/keys", headers=alice, json={"name": scope, "scopes": [scope]})
        keys[scope] = k.json()
    try:
        yield {"p": p, "alice": alice, "bob": bob, "sample": sample, "dep": dep["id"],
               "keys": keys}  # fmt: skip
    finally:
        p.stop()


def _key(k: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {k['key']}"}


# ---- every route has a policy --------------------------------------------------------------


def test_every_management_route_declares_a_policy(world: dict[str, Any]) -> None:
    routers = (router, predictions_router, batch_router)
    routes = [r for rt in routers for r in rt.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 25
    for route in routes:
        policies = [d.call for d in route.dependant.dependencies if d.call in POLICIES]
        assert len(policies) == 1, f"{route.methods} {route.path} has no (single) policy"


def test_every_data_plane_route_and_rpc_has_a_policy() -> None:
    # one policy table (the data plane's); every adapter maps its routes / RPCs onto it
    assert set(POLICY.values()) == {"public", "metrics", "list", "view", "infer", "admin"}
    for table in (HTTP_OPERATION, GRPC_OPERATION, SOCKET_OPERATION):
        assert set(table.values()) <= set(POLICY), set(table.values()) - set(POLICY)
    assert set(HTTP_OPERATION) >= OPENAI_ROUTES and set(HTTP_OPERATION) >= HOT_ROUTES
    methods = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert set(methods) == set(GRPC_OPERATION), set(methods) ^ set(GRPC_OPERATION)
    # the same kind of call has the same policy on every protocol
    assert POLICY[HTTP_OPERATION["infer"]] == POLICY[GRPC_OPERATION["ModelInfer"]] == "infer"
    assert POLICY[HTTP_OPERATION["predict"]] == POLICY[HTTP_OPERATION["openai_chat"]] == "infer"
    assert {POLICY[o] for o in SOCKET_OPERATION.values()} == {"infer"}
    assert POLICY[HTTP_OPERATION["repository_load"]] == "admin"
    assert POLICY[GRPC_OPERATION["RepositoryModelLoad"]] == "admin"


def test_every_data_plane_http_route_has_an_operation(world: dict[str, Any]) -> None:
    """The FastAPI app serves every data-plane route but the raw router's hot ones, each under
    a route name of the one route -> operation table (which picks its policy); the OpenAPI
    document describes both kinds."""
    server = world["p"].server.server
    routes = data_plane_router(server.asgi.plane, server.metrics, HttpLimits(), "inferd", "0")
    data_plane = [r for r in routes.routes if isinstance(r, APIRoute) and r.include_in_schema]
    assert len(data_plane) >= 25
    for route in data_plane:
        assert route.name in HTTP_OPERATION, f"{route.methods} {route.path} has no operation"
    assert {r.name for r in data_plane} == set(HTTP_OPERATION) - HOT_ROUTES
    paths = world["p"].http.get("/openapi.json").json()["paths"]
    for path in ("/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v1/completions"):
        assert "post" in paths[path], path


def test_anonymous_gets_401_on_every_protected_management_route(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    checked = 0
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        policy = next(d.call for d in route.dependant.dependencies if d.call in POLICIES)
        if policy.name in ("public", "optional"):
            continue
        path = route.path.replace("{name}", "secret").replace("{version}", "1")
        path = path.replace("{deployment_id}", world["dep"]).replace("{key_id}", "x")
        path = path.replace("{user_id}", "x")
        for method in route.methods:
            r = http.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
            checked += 1
    assert checked >= 20


def test_member_cannot_use_admin_functions(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    bob = world["bob"]
    assert http.get("/api/v1/users", headers=bob).status_code == 403
    assert http.get("/api/v1/audit", headers=bob).status_code == 403
    me = http.get("/api/v1/auth/me", headers=bob).json()
    r = http.patch(f"/api/v1/users/{me['id']}", headers=bob, json={"trusted": True})
    assert r.status_code == 403
    r = http.post("/api/v1/auth/register", headers=bob,
                  json={"username": "mallory", "password": PASSWORD, "role": "admin"})  # fmt: skip
    assert r.status_code == 403
    r = http.post("/api/v1/keys", headers=bob, json={"name": "x", "scopes": ["admin"]})
    assert r.status_code == 403
    assert http.post("/v2/repository/models/secret/unload", headers=bob).status_code == 403
    # mass assignment: unknown or privileged fields in a body are refused, not applied
    r = http.post("/api/v1/models", headers=bob, json={"name": "bobs", "owner_id": "x"})
    assert r.status_code == 400 and "owner_id" in r.json()["error"]


# ---- the BOLA matrix -------------------------------------------------------------------------


def _grpc(world: dict[str, Any]) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{world['p'].server.grpc_port}")


def _grpc_infer(world: dict[str, Any], headers: dict[str, str]) -> str:
    client = _grpc(world)
    x = grpcclient.InferInput("input", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    try:
        client.infer("secret", [x], headers={k.lower(): v for k, v in headers.items()})
        return "ok"
    except InferenceServerException as e:
        return str(e.status())
    finally:
        client.close()


def _verbs(world: dict[str, Any], h: dict[str, str]) -> dict[str, int | str]:
    http: httpx.Client = world["p"].http
    dep, sample = world["dep"], world["sample"]
    client = _grpc(world)
    meta = {k.lower(): v for k, v in h.items()}
    try:
        client.get_model_metadata("secret", headers=meta)
        grpc_meta: int | str = "ok"
    except InferenceServerException as e:
        grpc_meta = str(e.status())
    grpc_ready = client.is_model_ready("secret", headers=meta)
    names = [m.name for m in client.get_model_repository_index(headers=meta).models]
    client.close()
    listed = "secret" in [m["name"] for m in http.get("/api/v1/models", headers=h).json()]
    v1 = {"instances": [[1, 2, 3, 4]]}
    patch = {"description": "x"}
    dep_patch = {"config": {"min_replicas": 1}}
    revoke = f"/api/v1/keys/{world['keys']['infer']['id']}x"
    return {
        "model": http.get("/api/v1/models/secret", headers=h).status_code,
        "listed": listed,
        "versions": http.get("/api/v1/models/secret/versions", headers=h).status_code,
        "version": http.get("/api/v1/models/secret/versions/1", headers=h).status_code,
        "deployment": http.get(f"/api/v1/deployments/{dep}", headers=h).status_code,
        "v2_meta": http.get("/v2/models/secret", headers=h).status_code,
        "v2_ready": http.get("/v2/models/secret/ready", headers=h).status_code,
        "v2_infer": http.post("/v2/models/secret/infer", headers=h, json=sample).status_code,
        "v1_predict": http.post("/v1/models/secret:predict", headers=h, json=v1).status_code,
        "v2_listed": "secret" in http.get("/v2/models", headers=h).json().get("models", []),
        "grpc_infer": _grpc_infer(world, h),
        "grpc_meta": grpc_meta,
        "grpc_ready": grpc_ready,
        "grpc_listed": "secret" in names,
        "patch": http.patch("/api/v1/models/secret", headers=h, json=patch).status_code,
        "upload": world["p"].upload(h, "secret", b"x" * 64).status_code,
        "deploy_update": http.patch(
            f"/api/v1/deployments/{dep}", headers=h, json=dep_patch
        ).status_code,
        "test": http.post(f"/api/v1/deployments/{dep}/test", headers=h).status_code,
        "revoke_alices_key": http.delete(revoke, headers=h).status_code,
    }


HIDDEN = {
    "model": 404, "listed": False, "versions": 404, "version": 404, "deployment": 404,
    "v2_meta": 404, "v2_ready": 404, "v2_infer": 404, "v1_predict": 404, "v2_listed": False,
    "grpc_infer": "StatusCode.NOT_FOUND", "grpc_meta": "StatusCode.NOT_FOUND",
    "grpc_ready": False, "grpc_listed": False, "patch": 404, "upload": 404,
    "deploy_update": 404, "test": 404, "revoke_alices_key": 404,
}  # fmt: skip


def test_other_member_sees_nothing(world: dict[str, Any]) -> None:
    assert _verbs(world, world["bob"]) == HIDDEN


def test_anonymous_sees_nothing(world: dict[str, Any]) -> None:
    expected = dict(HIDDEN, deployment=401, patch=401, upload=401, deploy_update=401, test=401,
                    revoke_alices_key=401)  # fmt: skip
    assert _verbs(world, {}) == expected


def test_owner_infer_key_can_use_but_not_manage(world: dict[str, Any]) -> None:
    got = _verbs(world, _key(world["keys"]["infer"]))
    assert got["model"] == 200 and got["listed"] and got["v2_infer"] == 200
    assert got["grpc_infer"] == "ok" and got["grpc_ready"] is True and got["grpc_listed"]
    assert got["v1_predict"] == 200 and got["test"] == 200
    assert got["patch"] == got["upload"] == got["deploy_update"] == 403


def test_owner_and_admin_can_do_everything(world: dict[str, Any]) -> None:
    for h in (world["alice"], ADMIN, _key(world["keys"]["manage"])):
        got = _verbs(world, h)
        assert got["model"] == got["versions"] == got["version"] == got["deployment"] == 200
        assert got["v2_infer"] == got["v2_meta"] == 200 and got["grpc_infer"] == "ok"
        assert got["patch"] == 200 and got["deploy_update"] == 200
        assert got["upload"] == 422  # garbage bytes: refused as an unknown format, not as 403
        world["p"].wait_deployment(world["alice"], world["dep"])


# ---- forged and revoked credentials ------------------------------------------------------


def _forgeries(world: dict[str, Any]) -> list[str]:
    token = world["alice"]["Authorization"].split()[1]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    now = int(time.time())

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    tampered = dict(claims, role="admin")
    expired = dict(claims, exp=now - 3600, iat=now - 7200, nbf=now - 7200)
    return [
        f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(tampered)}.",
        jwt.encode(tampered, "x" * 48, algorithm="HS256", headers={"kid": "k1"}),
        jwt.encode(expired, "y" * 48, algorithm="HS256", headers={"kid": "k1"}),
        f"{head}.{b64(tampered)}.{sig}",
        f"{head}.{b64(dict(claims, aud='other'))}.{sig}",
        "inferd_AAAAAAAA_" + "B" * 43,
        "not.a.token",
    ]


def test_forged_tokens_are_401_everywhere(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    for token in _forgeries(world):
        h = {"Authorization": f"Bearer {token}"}
        assert http.get("/api/v1/auth/me", headers=h).status_code == 401, token
        r = http.post("/v2/models/secret/infer", headers=h, json=world["sample"])
        assert r.status_code == 401, token
        assert _grpc_infer(world, h) == "StatusCode.UNAUTHENTICATED"
    assert http.get("/api/v1/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401


@pytest.mark.parametrize("placeholder", ["EMPTY", "sk-no-key-required", "not-a-token"])
def test_one_rule_of_no_credential_on_every_route(world: dict[str, Any], placeholder: str) -> None:
    """A bearer value shaped like neither an inferd key nor a JWT (what OpenAI clients must send
    when there is no key) is no credential on every route and RPC: the caller is anonymous
    (private models are 404, as to anyone without credentials), never a 401 on one route and
    anonymous on the next."""
    http: httpx.Client = world["p"].http
    h = {"Authorization": f"Bearer {placeholder}"}
    assert http.post("/v2/models/secret/infer", headers=h, json=world["sample"]).status_code == 404
    assert http.get("/v2/models/secret", headers=h).status_code == 404
    assert http.get("/v1/models/secret", headers=h).status_code == 404
    r = http.post("/v1/completions", headers=h, json={"model": "secret", "prompt": "x"})
    assert r.status_code == 404
    assert _grpc_infer(world, h) == "StatusCode.NOT_FOUND"
    assert http.get("/api/v1/auth/me", headers=h).status_code == 401  # anonymous: not signed in
    assert http.get("/v1/models", headers=h).status_code == 200
    owner = http.get("/v1/models/secret", headers=world["alice"])
    assert owner.status_code == 200
    doc = owner.json()  # one document for both dialects of the path
    assert doc["ready"] is True and doc["name"] == "secret"  # KServe V1 readiness
    assert doc["id"] == "secret" and doc["object"] == "model"  # OpenAI's Model


def test_refresh_token_is_not_an_access_token(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    pair = http.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    refresh = pair.json()["refresh_token"]
    h = {"Authorization": f"Bearer {refresh}"}
    assert http.get("/api/v1/auth/me", headers=h).status_code == 401
    new = http.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
    assert new.status_code == 200
    h = {"Authorization": f"Bearer {new.json()['access_token']}"}
    assert http.get("/api/v1/auth/me", headers=h).json()["username"] == "alice"


def test_wrong_password_and_unknown_user_look_the_same(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    a = http.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong pass"})
    b = http.post("/api/v1/auth/login", json={"username": "nobody1", "password": "wrong pass"})
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()


def test_revoked_key_fails_at_once_on_rest_and_grpc(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    k = http.post("/api/v1/keys", headers=world["alice"], json={"name": "tmp"}).json()
    h = _key(k)
    assert http.post("/v2/models/secret/infer", headers=h, json=world["sample"]).status_code == 200
    assert _grpc_infer(world, h) == "ok"
    assert http.delete(f"/api/v1/keys/{k['id']}", headers=world["alice"]).status_code == 200
    assert http.post("/v2/models/secret/infer", headers=h, json=world["sample"]).status_code == 401
    assert _grpc_infer(world, h) == "StatusCode.UNAUTHENTICATED"


def test_error_bodies_carry_no_internals(world: dict[str, Any], tmp_path: Path) -> None:
    http: httpx.Client = world["p"].http
    alice = world["alice"]
    bodies = [
        http.get("/api/v1/models/..%2f..%2fetc", headers=alice).text,
        http.post("/api/v1/models", headers=alice, json={"name": "../etc"}).text,
        http.post("/api/v1/models", headers=alice, json={"name": "secret"}).text,
        http.get("/api/v1/deployments/' OR 1=1 --", headers=alice).text,
        http.get("/api/v1/models/secret/versions/99999999999999999999", headers=alice).text,
        world["p"].upload(alice, "secret", b"\x80\x04garbage").text,
    ]
    for body in bodies:
        for leak in ("Traceback", "SELECT", "sqlalchemy", "/tmp/", str(tmp_path), "site-packages"):
            assert leak not in body, body


def test_openapi_documents_the_management_api(world: dict[str, Any]) -> None:
    http: httpx.Client = world["p"].http
    doc = http.get("/openapi.json").json()
    documented = set(doc["paths"])
    routes = {r.path for r in router.routes if isinstance(r, APIRoute)}
    assert routes <= documented, routes - documented
    assert http.get("/docs").status_code == 200
