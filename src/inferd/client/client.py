"""`Client`: every management route under /api/v1 and V2 inference, over one `httpx.Client`."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from inferd._version import __version__
from inferd.client.batches import BatchJobs
from inferd.client.errors import InferdClientError, error_from_response
from inferd.client.tensors import decode_outputs, encode_inputs
from inferd.client.upload import Progress, ProgressFile

DEFAULT_URL = "http://127.0.0.1:8000"
#: Routes that take no credential. None is sent: the server rejects an expired bearer token
#: even on public routes, which would make refreshing an expired session impossible.
_AUTH_ROUTES = ("/api/v1/auth/login", "/api/v1/auth/refresh")


def _expired(token: str, at: float) -> bool:
    """True when a JWT's `exp` is before `at` (read, not verified: the server verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) <= at
    except (IndexError, ValueError, KeyError, TypeError):
        return False  # not a JWT we can read: let the server decide


def _poll(get: Callable[[], Any], pending: str, what: str, timeout: float) -> Any:
    """`get()` until its status is no longer `pending`; an error with status 0 on timeout."""
    deadline = time.monotonic() + timeout
    interval = 0.2
    while True:
        doc = get()
        if doc.get("status") != pending:
            return doc
        if time.monotonic() >= deadline:
            raise InferdClientError(0, f"{what} is still {pending} after {timeout:g}s")
        time.sleep(interval)
        interval = min(interval * 1.5, 2.0)  # fast for quick loads, gentle for long ones


def _seg(value: object) -> str:
    """One URL path segment (a name or id never changes the route it goes to)."""
    return quote(str(value), safe="")


class Client(BatchJobs):
    """A synchronous client for an inferd server.

    `token` (a login's access token) or `api_key` is sent as `Authorization: Bearer ...`.
    With a `refresh_token` (set by `login()`), a 401 on an expired access token is answered by
    refreshing once and retrying; `on_tokens` is called with every new token pair, so a caller
    can persist it. Every non-2xx answer raises `InferdClientError`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        refresh_token: str | None = None,
        on_tokens: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if token and api_key:
            raise ValueError("give token or api_key, not both")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.api_key = api_key
        self.refresh_token = refresh_token
        self.on_tokens = on_tokens
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"inferd-client/{__version__}"},
        )

    # ---- plumbing ----------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _headers(self) -> dict[str, str]:
        credential = self.token or self.api_key
        return {"Authorization": f"Bearer {credential}"} if credential else {}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {} if path in _AUTH_ROUTES else self._headers()
        extra = kwargs.pop("headers", None)
        if extra:
            headers = {**headers, **extra}
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as e:
            raise InferdClientError(0, f"{method} {self.base_url}{path}: timed out ({e})") from e
        except httpx.TransportError as e:
            raise InferdClientError(0, f"cannot reach {self.base_url}: {e}") from e

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call: the decoded JSON answer (None when empty); non-2xx raises."""
        session = bool(self.refresh_token and self.token) and path not in _AUTH_ROUTES
        # refresh a session about to expire first: an upload refused with 401 mid-body would
        # surface as a broken connection, not as a 401 to retry
        if session and self.token and _expired(self.token, time.time() + 5):
            try:
                self.refresh()
            except InferdClientError:
                pass  # the call itself will report what is wrong
        r = self._send(method, path, **kwargs)
        if r.status_code == 401 and session:
            first = error_from_response(r)
            try:
                self.refresh()
            except InferdClientError:
                raise first from None  # the session is over: report why the call failed
            r = self._send(method, path, **kwargs)
        if not r.is_success:
            raise error_from_response(r)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def _tokens(self, pair: dict[str, Any]) -> dict[str, Any]:
        self.token = pair["access_token"]
        self.refresh_token = pair.get("refresh_token")
        self.api_key = None
        if self.on_tokens is not None:
            self.on_tokens(pair)
        return pair

    # ---- users and sessions ------------------------------------------------------------

    def register(self, username: str, password: str, role: str = "member") -> dict[str, Any]:
        """Create a user (admins: anyone; others only where registration is open)."""
        body = {"username": username, "password": password, "role": role}
        return self.request("POST", "/api/v1/auth/register", json=body)

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Sign in: the client uses the new access token from now on (refreshing it when it
        expires). Returns `{access_token, refresh_token, token_type, expires_in}`."""
        pair = self.request("POST", "/api/v1/auth/login",
                            json={"username": username, "password": password})  # fmt: skip
        return self._tokens(pair)

    def refresh(self) -> dict[str, Any]:
        """Trade the refresh token for a new token pair (stored on the client)."""
        if not self.refresh_token:
            raise ValueError("no refresh token: call login() first")
        pair = self.request("POST", "/api/v1/auth/refresh",
                            json={"refresh_token": self.refresh_token})  # fmt: skip
        return self._tokens(pair)

    def me(self) -> dict[str, Any]:
        """The calling user, with the scopes and kind (`via`) of the credential in use."""
        return self.request("GET", "/api/v1/auth/me")

    def users(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/users")

    def update_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Admins: role, trusted, disabled, rpm_limit, concurrency_limit, storage_quota_bytes."""
        return self.request("PATCH", f"/api/v1/users/{_seg(user_id)}", json=fields)

    # ---- API keys ----------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        scopes: Iterable[str] = ("infer",),
        expires_at: datetime | str | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """A new API key; its secret is in `["key"]` of this answer only."""
        if isinstance(expires_at, datetime):
            expires_at = expires_at.isoformat()
        body = {"name": name, "scopes": list(scopes), "expires_at": expires_at, "user_id": user_id}
        return self.request("POST", "/api/v1/keys", json=body)

    def keys(self, user_id: str | None = None) -> list[dict[str, Any]]:
        params = {"user_id": user_id} if user_id else None
        return self.request("GET", "/api/v1/keys", params=params)

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/keys/{_seg(key_id)}")

    # ---- models ------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/models")

    def create_model(self, name: str, **fields: Any) -> dict[str, Any]:
        """Fields: description, framework, model_type, task_type, tags, visibility."""
        return self.request("POST", "/api/v1/models", json={"name": name, **fields})

    def model(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/models/{_seg(name)}")

    def update_model(self, name: str, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/v1/models/{_seg(name)}", json=fields)

    def delete_model(self, name: str) -> dict[str, Any]:
        """Delete a model with its versions, artifacts and deployment."""
        return self.request("DELETE", f"/api/v1/models/{_seg(name)}")

    # ---- async predictions -------------------------------------------------------------

    def submit_prediction(
        self, model: str, body: Mapping[str, Any], version: int | str | None = None,
        priority: int = 0, idempotency_key: str | None = None, webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a V2 inference body for `model`; returns the job (`id`, `status`, ...).
        The same `idempotency_key` gives back the first job. `webhook`: an http(s) URL its
        events are POSTed to, signed with your `webhook_secret()`; `webhook_events`: besides
        `completed`, which it always gets."""
        doc: dict[str, Any] = {"model": model, "input": dict(body), "priority": priority}
        if version is not None:
            doc["version"] = version
        if webhook is not None:
            doc["webhook"] = webhook
        if webhook_events is not None:
            doc["webhook_events"] = list(webhook_events)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/api/v1/predictions", json=doc, headers=headers)

    def prediction(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/predictions/{_seg(job_id)}")

    def predictions(
        self, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self.request("GET", "/api/v1/predictions", params=params)

    def cancel_prediction(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/predictions/{_seg(job_id)}/cancel")

    def prediction_deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The prediction's webhook deliveries: event, status, attempts, last code or error."""
        return self.request("GET", f"/api/v1/predictions/{_seg(job_id)}/deliveries")

    def webhook_secret(self) -> dict[str, Any]:
        """Your webhook signing secret (`secret`; `previous` while a rotated one still signs):
        verify deliveries with `standardwebhooks.Webhook(secret).verify(body, headers)`."""
        return self.request("GET", "/api/v1/webhooks/secret")

    def rotate_webhook_secret(self) -> dict[str, Any]:
        """A new webhook signing secret; the previous one signs too until `previous_until`."""
        return self.request("POST", "/api/v1/webhooks/secret/rotate")

    def wait_prediction(
        self, job_id: str, timeout: float = 600,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Poll until the job ends (`succeeded`, `failed`, `cancelled`) and return it;
        `on_status(job)` sees every poll. A wait that times out raises (status 0)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            job = self.prediction(job_id)
            if on_status is not None:
                on_status(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise InferdClientError(0, f"prediction {job_id} still {job['status']} after "
                                        f"{timeout:g} s")  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ---- pipelines ---------------------------------------------------------------------

    def pipelines(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/pipelines")

    def create_pipeline(
        self, name: str, document: Mapping[str, Any], visibility: str = "private",
        description: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """Create a pipeline (docs/pipelines.md) with `document` as its version 1; deploy it
        with `deploy(name)`. A bad document raises InferdApiError (422) naming the field."""
        return self.request("POST", "/api/v1/pipelines", json={
            "name": name, "document": dict(document), "visibility": visibility,
            "description": description})  # fmt: skip

    def update_pipeline(self, name: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Store `document` as the pipeline's next version."""
        return self.request("PUT", f"/api/v1/pipelines/{_seg(name)}",
                            json={"document": dict(document)})  # fmt: skip

    def pipeline(self, name: str, version: int | None = None) -> dict[str, Any]:
        """The pipeline with its newest (or `version`'s) document."""
        if version is None:
            return self.request("GET", f"/api/v1/pipelines/{_seg(name)}")
        return self.request("GET", f"/api/v1/pipelines/{_seg(name)}/versions/{int(version)}")

    def validate_pipeline(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Check a document as saving it would, storing nothing."""
        return self.request("POST", "/api/v1/pipelines/validate",
                            json={"document": dict(document)})  # fmt: skip

    def delete_pipeline(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/pipelines/{_seg(name)}")

    # ---- versions ----------------------------------------------------------------------

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/models/{_seg(name)}/versions")

    def upload(
        self,
        name: str,
        path: str | Path,
        meta: Mapping[str, Any] | None = None,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload an artifact file as a new version, streamed from disk.

        `meta` may state runtime, inputs, outputs, max_batch_size, parameters, sample_input and
        sample_output. `on_progress(sent, total)` is called as the file's bytes go out. The
        server validates the version by loading it before it answers.
        """
        with ProgressFile(path, on_progress) as f:
            if on_progress is not None:
                on_progress(0, f.total)
            files = {"file": (Path(path).name, f, "application/octet-stream")}
            data = {"meta": json.dumps(dict(meta))} if meta else None
            return self.request("POST", f"/api/v1/models/{_seg(name)}/versions",
                                files=files, data=data)  # fmt: skip

    def import_url(
        self, name: str, url: str, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Start importing a version from an http(s) URL; it is `importing` until it is `ready`
        or `failed` (poll `version()`)."""
        body = {**(meta or {}), "url": url}
        return self.request("POST", f"/api/v1/models/{_seg(name)}/versions/import", json=body)

    def version(self, name: str, v: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/models/{_seg(name)}/versions/{int(v)}")

    def wait_version(self, name: str, v: int, timeout: float = 600) -> dict[str, Any]:
        """Poll an imported version until it is no longer `importing` (`ready` or `failed`)."""
        return _poll(lambda: self.version(name, v), "importing", f"{name} version {v}", timeout)

    def update_version(self, name: str, v: int, **fields: Any) -> dict[str, Any]:
        """Fields: sample_input (a V2 request body), sample_output (its expected answer)."""
        return self.request("PATCH", f"/api/v1/models/{_seg(name)}/versions/{int(v)}",
                            json=fields)  # fmt: skip

    def delete_version(self, name: str, v: int) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/models/{_seg(name)}/versions/{int(v)}")

    # ---- deployments -------------------------------------------------------------------

    def deployments(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/deployments")

    def deployment(self, id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/deployments/{_seg(id)}")

    def deploy(
        self,
        model: str,
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Deploy a version (default: the newest ready one). With `wait`, returns once the
        status has left `deploying` (`ready`, or `failed` with a `reason`)."""
        body: dict[str, Any] = {"model": model}
        if version is not None:
            body["version"] = version
        if config is not None:
            body["config"] = dict(config)
        dep = self.request("POST", "/api/v1/deployments", json=body)
        return self.wait_deployment(dep["id"], timeout) if wait else dep

    def update_deployment(
        self,
        id: str,
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Move a deployment to another version and/or a new config (the whole config)."""
        body: dict[str, Any] = {}
        if version is not None:
            body["version"] = version
        if config is not None:
            body["config"] = dict(config)
        dep = self.request("PATCH", f"/api/v1/deployments/{_seg(id)}", json=body)
        return self.wait_deployment(dep["id"], timeout) if wait else dep

    def set_traffic(
        self,
        model: str,
        weights: Mapping[int, int],
        wait: bool = True,
        timeout: float = 120,
        configs: Mapping[int, Mapping[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Split the traffic of `model`'s deployment among revisions: `{1: 90, 2: 10}` (whole
        percentages summing to 100). Revisions already served keep their replicas (and their
        own runtime configs); new ones load before they take traffic. `configs` gives
        revisions their own runtime config (`{2: {"max_replicas": 4}}`; None: back to the
        deployment's). A model without a deployment is deployed this way."""
        own = {int(v): c for v, c in (configs or {}).items()}
        traffic: list[dict[str, Any]] = []
        for v, w in weights.items():
            entry: dict[str, Any] = {"version": int(v), "weight": int(w)}
            if int(v) in own:
                entry["config"] = own[int(v)]
            traffic.append(entry)
        dep = next((d for d in self.deployments() if d["model"] == model), None)
        if dep is None:
            dep = self.request("POST", "/api/v1/deployments",
                               json={"model": model, "traffic": traffic})  # fmt: skip
        else:
            dep = self.request("PATCH", f"/api/v1/deployments/{_seg(dep['id'])}",
                               json={"traffic": traffic})  # fmt: skip
        return self.wait_deployment(dep["id"], timeout) if wait else dep

    def set_routing(self, model: str, routing: Mapping[str, Any]) -> dict[str, Any]:
        """Set the routing policy of `model`'s deployment: header `rules`, `fallbacks` and a
        `circuit_breaker` (docs/control-plane.md); `{}` removes it. Nothing is reloaded."""
        dep = self._deployment_of(model)
        return self.request("PATCH", f"/api/v1/deployments/{_seg(dep['id'])}",
                            json={"routing": dict(routing)})  # fmt: skip

    def rollout(
        self, model: str, version: int, test: bool = False, keep_previous_s: float = 300.0,
        timeout: float = 600,
    ) -> dict[str, Any]:  # fmt: skip
        """Blue-green rollout of `model`'s deployment to `version`: brought up beside the served
        version (its sample test passed first, with `test`), then all traffic switched at once;
        the previous version stays warm `keep_previous_s` seconds for `rollback`. Returns the
        deployment, with `rollout` (phase and events)."""
        dep = self._deployment_of(model)
        body = {"strategy": "blue_green", "version": int(version), "test": test,
                "keep_previous_s": keep_previous_s}  # fmt: skip
        return self.request("POST", f"/api/v1/deployments/{_seg(dep['id'])}/rollout",
                            json=body, timeout=timeout)  # fmt: skip

    def canary(
        self, model: str, version: int, steps: Sequence[int] | None = None,
        dwell_s: float | None = None, interval_s: float | None = None,
        analysis: Mapping[str, Any] | None = None, auto_promote: bool = True,
        config: Mapping[str, Any] | None = None, timeout: float = 600,
    ) -> dict[str, Any]:  # fmt: skip
        """Canary rollout of `model`'s deployment to `version`: brought up beside the served
        version, then given `steps` of the traffic (e.g. `[5, 25, 50, 100]`), each lasting at
        least `dwell_s`, compared with the stable version every `interval_s` by `analysis`
        (`min_requests`, `max_error_rate`, `max_error_rate_increase`, `max_latency_ratio`,
        `latency_tolerance_ms`, `window_s`): rolled back at the first failed check, promoted
        (with its own runtime `config`, when given)
        after the last step (without `auto_promote`: held at the last step, still analysed,
        until `promote`). Returns once the first step is applied; the deployment's `rollout`
        (`phase`, `weight`, `analysis`, `events`; `rollout_status`) shows the rest."""
        dep = self._deployment_of(model)
        given = {"steps": list(steps) if steps is not None else None, "dwell_s": dwell_s,
                 "interval_s": interval_s,
                 "analysis": dict(analysis) if analysis is not None else None}  # fmt: skip
        plan = {k: v for k, v in given.items() if v is not None} | {"auto_promote": auto_promote}
        body: dict[str, Any] = {"strategy": "canary", "version": int(version), "canary": plan}
        if config is not None:
            body["config"] = dict(config)
        return self.request("POST", f"/api/v1/deployments/{_seg(dep['id'])}/rollout",
                            json=body, timeout=timeout)  # fmt: skip

    def rollout_status(self, model: str) -> dict[str, Any]:
        """`model`'s deployment with its latest rollout (`rollout`: phase, share, analysis,
        events), as the server that runs it sees it."""
        return self.deployment(self._deployment_of(model)["id"])

    def promote(self, model: str) -> dict[str, Any]:
        """End `model`'s canary now: the canary version serves alone."""
        dep = self._deployment_of(model)
        return self.request("POST", f"/api/v1/deployments/{_seg(dep['id'])}/promote")

    def rollback(self, model: str) -> dict[str, Any]:
        """Move `model`'s traffic back to the version served before its last rollout (a
        canary's stable version while it progresses)."""
        dep = self._deployment_of(model)
        return self.request("POST", f"/api/v1/deployments/{_seg(dep['id'])}/rollback")

    def feedback(self, model: str, request_id: str, reward: float) -> dict[str, Any]:
        """Attach an outcome (a number; 0/1 for a rate) to a request `model`'s deployment
        answered (the request's `id`), for its A/B test."""
        dep = self._deployment_of(model)
        return self.request("POST", f"/api/v1/deployments/{_seg(dep['id'])}/feedback",
                            json={"request_id": request_id, "reward": reward})  # fmt: skip

    def abtest_report(self, model: str) -> dict[str, Any]:
        """`model`'s A/B report: each arm's counts, mean and rate, and each arm against the
        control arm (test, p-value, difference and its 95 % interval)."""
        dep = self._deployment_of(model)
        return self.request("GET", f"/api/v1/deployments/{_seg(dep['id'])}/abtest")

    def _deployment_of(self, model: str) -> dict[str, Any]:
        dep = next((d for d in self.deployments() if d["model"] == model), None)
        if dep is None:
            raise InferdClientError(404, f"model '{model}' has no deployment")
        return dep

    def wait_deployment(self, id: str, timeout: float = 120) -> dict[str, Any]:
        """Poll until the deployment is no longer `deploying`."""
        return _poll(lambda: self.deployment(id), "deploying", f"deployment {id}", timeout)

    def delete_deployment(self, id: str) -> None:
        self.request("DELETE", f"/api/v1/deployments/{_seg(id)}")

    def test_deployment(self, id: str) -> dict[str, Any]:
        """Run the deployed version's sample input: `{passed, problems, output, expected}`."""
        return self.request("POST", f"/api/v1/deployments/{_seg(id)}/test")

    # ---- audit -------------------------------------------------------------------------

    def audit(
        self, limit: int = 100, actor_id: str | None = None, action: str | None = None
    ) -> list[dict[str, Any]]:
        """Management actions, newest first (admins only)."""
        params: dict[str, Any] = {"limit": limit}
        if actor_id is not None:
            params["actor_id"] = actor_id
        if action is not None:
            params["action"] = action
        return self.request("GET", "/api/v1/audit", params=params)

    # ---- inference ---------------------------------------------------------------------

    def predict_raw(
        self, model: str, body: Mapping[str, Any], version: int | str | None = None
    ) -> dict[str, Any]:
        """POST a V2 inference body as is; returns the V2 response body."""
        path = f"/v2/models/{_seg(model)}"
        if version is not None:
            path += f"/versions/{_seg(version)}"
        return self.request("POST", f"{path}/infer", json=dict(body))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        version: int | str | None = None,
        outputs: Sequence[str | Mapping[str, Any]] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run a model: `inputs` maps input names to numpy arrays or nested lists (or is a list
        of V2 tensor dicts). Returns `{output name: numpy array}`.

        numpy arrays keep their dtype (float32 → FP32, int64 → INT64, str → BYTES, ...); plain
        lists of floats go as FP32, of ints as INT64. `outputs` names the outputs wanted.
        """
        body: dict[str, Any] = {"inputs": encode_inputs(inputs)}
        if outputs is not None:
            body["outputs"] = [{"name": o} if isinstance(o, str) else dict(o) for o in outputs]
        if parameters is not None:
            body["parameters"] = dict(parameters)
        return decode_outputs(self.predict_raw(model, body, version))
