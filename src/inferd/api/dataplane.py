"""The data plane: what every protocol adapter shares, written once.

V2 REST, KServe V1, gRPC, OpenAI, V2 generate and the WebSocket adapter each do the same four
things: extract the caller's credentials (`Credentials`), decode the wire request, make one
`DataPlane` call, encode the answer (errors through one table per adapter). Everything between
the wire and the engine lives here, once: who may call what (`POLICY`, one notion of "no
credential"), admission (the draining check, rate and concurrency limits), model / version
lookup, infer, generate, repository index / load / unload, statistics. The capabilities that sit
between the wire and the engine (traffic routing to a revision, shadow, fallback) go here too.

Nothing in this module knows a protocol: the data plane may not import an adapter (an
import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from inferd.api.model_config import load_from_repository
from inferd.auth.policy import can_see
from inferd.auth.principal import ANONYMOUS, Principal
from inferd.control.audit import Actor
from inferd.control.gate import Gate
from inferd.control.identity import looks_like_credential
from inferd.control.jobs import Jobs, job_view
from inferd.core.canary import Window
from inferd.core.errors import (
    InferdError,
    InvalidInput,
    ModelExecutionError,
    ServerNotReady,
    Unauthenticated,
)
from inferd.core.generate import GenerateRequest, TokenEvent, parse_sampling
from inferd.core.routing import (
    FAILURES,
    STATE_VALUE,
    CircuitOpen,
    Routes,
    RoutingPolicy,
    Shadow,
    ShadowStats,
    compare,
    sticky_draw,
)
from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor
from inferd.observability.routing import RoutingMetrics
from inferd.serving.engine import InferenceEngine, ServedModel, ServedVersion
from inferd.serving.generation import Generation
from inferd.workers import limits

PUBLIC, METRICS, LIST, VIEW, INFER, ADMIN = "public", "metrics", "list", "view", "infer", "admin"

#: The access policy of every data-plane operation. Each adapter maps its routes / RPCs to these
#: operations (tests/integration/test_access.py checks every route and RPC has one):
#: `public` anyone; `metrics` public unless the operator says otherwise (series filtered like a
#: list); `list` a listing filtered to what the caller may see; `view` / `infer` the named model
#: must be visible / callable (someone else's private model is "not found"); `admin` an admin.
POLICY: dict[str, str] = {
    "server_live": PUBLIC, "server_ready": PUBLIC, "server_metadata": PUBLIC,
    "unimplemented": PUBLIC, "metrics": METRICS,
    "model_list": LIST, "server_stats": LIST, "repository_index": LIST,
    "model_metadata": VIEW, "model_ready": VIEW, "model_config": VIEW, "model_stats": VIEW,
    "infer": INFER, "generate": INFER,
    "repository_load": ADMIN, "repository_unload": ADMIN,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a caller presented, as every adapter extracts it: the `Authorization` header (or
    gRPC metadata / WebSocket handshake header) and `x-api-key`. Neither = no credential."""

    authorization: str | None = None
    api_key: str | None = None


NO_CREDENTIALS = Credentials()

#: Reads one request header (gRPC: metadata key) by its lower-case name, None when absent: what
#: a deployment's routing rules and sticky A/B keys read. Every adapter passes one.
Header = Callable[[str], str | None]


class _Free:
    """The admission of a caller without limits (anonymous): nothing to acquire."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_FREE = _Free()


class Decoding:
    """Times an adapter's wire decoding (`with plane.decoding(sv) as d: request = decode(...)`)
    and counts a request that fails to decode against the version it was sent to."""

    __slots__ = ("_plane", "_sv", "elapsed_ns", "start_ns")

    def __init__(self, plane: DataPlane, sv: ServedVersion) -> None:
        self._plane = plane
        self._sv = sv
        self.start_ns = 0
        self.elapsed_ns = 0

    def __enter__(self) -> Decoding:
        self.start_ns = time.perf_counter_ns()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.elapsed_ns = time.perf_counter_ns() - self.start_ns
        if e is not None:
            self._plane.engine.decode_failed(self._sv, e, self.elapsed_ns)


class DataPlane:
    """Policy, admission, lookup and the engine calls every protocol makes."""

    def __init__(
        self,
        engine: InferenceEngine,
        generation: Generation,
        gate: Gate,
        draw: Callable[[], float] = random.random,
        routes: Routes | None = None,
        metrics: RoutingMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.generation = generation
        self.gate = gate
        #: Async predictions (set by the composition root); None: the server takes none.
        self.jobs: Jobs | None = None
        #: A uniform draw in [0, 1) per routed request (injected: tests fix the sequence).
        self._draw = draw
        #: Deployments' header rules, fallbacks and circuit breakers (set by the reconciler).
        self.routes = routes if routes is not None else Routes()
        self.routing_metrics = metrics
        self._clock = clock
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # ---- who is calling, and may they ------------------------------------------------------

    async def caller(self, credentials: Credentials) -> Principal:
        """The principal behind `credentials`; none presented is the anonymous caller (whether
        anonymous calls are allowed is the policy's business). A value that does not look like
        a credential (`EMPTY`, an OpenAI client's placeholder) counts as none
        (`Identity.authenticate`); a bad credential raises Unauthenticated."""
        if credentials.authorization is None and credentials.api_key is None:
            return ANONYMOUS
        return await self.gate.principal(credentials.authorization, credentials.api_key)

    def allow(self, operation: str, p: Principal, model: str | None = None) -> None:
        """Apply `POLICY[operation]` to the caller; raises when not allowed."""
        policy = POLICY[operation]
        gate = self.gate
        if policy in (VIEW, INFER):
            if model is None:  # a model-less call to a model route: at least a caller
                gate.visible(p, ())
            else:
                gate.model(p, model, policy == INFER)
        elif policy == LIST:
            gate.visible(p, ())
        elif policy == ADMIN:
            gate.admin(p)
        elif policy == METRICS:
            gate.metrics(p)

    async def authorize(
        self, operation: str, credentials: Credentials, model: str | None = None
    ) -> Principal:
        """`caller` then `allow`: the first step of every adapter call."""
        p = await self.caller(credentials)
        self.allow(operation, p, model)
        return p

    def admit(self, p: Principal) -> contextlib.AbstractAsyncContextManager[None]:
        """Admission of new work, for every protocol's infer and generate: refused while the
        server drains (503), then the caller's rate and concurrency limits (429)."""
        self.engine.admit()
        if p.anonymous:
            return _FREE
        return self.gate.admit(p)

    async def metrics_shown(self, credentials: Credentials) -> Callable[[str], bool] | None:
        """Whose series /metrics shows the caller: every model's (None) to an admin or to the
        operator's scrape token (`auth.metrics_token`); otherwise the models the caller may see
        (public ones, its own), by the rule the listings use. A name the server neither knows
        nor serves (a deleted model's leftover series) is shown to no one else."""
        gate = self.gate
        token = gate.identity.settings.metrics_token
        authorization = credentials.authorization
        if token is not None and authorization is not None:
            scheme, _, value = authorization.partition(" ")
            secret = token.get_secret_value().encode()
            if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), secret):
                return None
            if not looks_like_credential(value.strip()):
                # where a scrape token is set, a bearer value that is neither it nor a
                # credential is a scraper with the wrong token: say so, do not answer less
                raise Unauthenticated("invalid metrics token")
        p = await self.authorize("metrics", credentials)
        if p.is_admin:
            return None
        by_name = gate.catalog.by_name
        served = {m.name for m in self.engine.models()}

        def shown(name: str) -> bool:
            model = by_name.get(name)
            if model is None:  # a repository model: public while it is served
                return name in served
            # /metrics is public by the operator's choice, so anonymous callers see what any
            # caller may see (public models) even where anonymous inference is off
            return model.system or can_see(p, model, allow_anonymous=True)

        return shown

    def visible(self, p: Principal) -> list[str]:
        """Names of the served models the caller may see."""
        return self.gate.visible(p, [m.name for m in self.engine.models()])

    # ---- health and lookup -------------------------------------------------------------------

    def live(self) -> bool:
        return self.engine.live()

    def not_ready_reason(self) -> str | None:
        """None when the server is ready for traffic, else why not."""
        return self.engine.not_ready_reason()

    def model(self, name: str) -> ServedModel:
        return self.engine.model(name)

    def version(self, name: str, version: str | None = None,
                header: Header | None = None) -> ServedVersion:  # fmt: skip
        """The served version a request for `name` goes to: the routing step of every protocol.

        A request that names a version gets it (any deployed revision is reachable that way);
        one that does not goes where the deployment's first matching header rule says
        (`header(name)` reads a request header by its lower-case name), else is routed by the
        model's traffic split (a weighted draw among its revisions), else goes to the model's
        default version."""
        if not version:
            policy = self.routes.policies.get(name)
            if policy is not None and policy.rules and header is not None:
                version = policy.route(header)
            if not version:
                split = self.engine.model(name).traffic
                if split is not None:
                    u = self._sticky(policy, header)
                    version = split.pick(self._draw() if u is None else u)
        return self.engine.version(name, version)

    async def submit_async(
        self, p: Principal, name: str, version: str | None, body: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[dict[str, Any], bool]:  # fmt: skip
        """Queue a V2 body as an async prediction (`Prefer: respond-async`): the same job
        `POST /api/v1/predictions` makes, as that route shows it (and whether it was created
        now)."""
        if self.jobs is None:
            raise ServerNotReady("this server takes no async predictions")
        fields = {"model": name, "version": version, "input": body}
        job, created = await self.jobs.submit(Actor(p, context={"route": "infer"}), fields,
                                              idempotency_key)  # fmt: skip
        return job_view(job), created

    async def run_step(
        self, name: str, version: str | None, request: InferenceRequest
    ) -> InferenceResponse:
        """One model step of an ensemble or pipeline (`serving/composite.py`), routed as a
        request that names `name` is: traffic split, circuit breaker and fallbacks, canary
        analysis. A model that generates text (`runtime: llm`) takes the step as Triton's
        generate extension does: each string of its `text_input` tensor (or its only BYTES
        tensor) is a prompt, sampled with the request's parameters, and the texts come back
        as `text_output`, in the same shape."""
        sv = self.version(name, version)
        if sv.runtime_name == "llm":
            return await self._generate_step(sv, request)
        return await self.infer(sv, request)

    async def _generate_step(
        self, sv: ServedVersion, request: InferenceRequest
    ) -> InferenceResponse:
        texts = [t for t in request.inputs if t.name == "text_input"] or [
            t for t in request.inputs if t.datatype == "BYTES"
        ]
        if len(texts) != 1:
            raise InvalidInput(f"model '{sv.name}' generates text: give it one BYTES tensor "
                               "'text_input' of prompts")  # fmt: skip
        prompts = texts[0].data
        params = parse_sampling(request.parameters or {})
        base = request.id or uuid.uuid4().hex
        sv = self.generator(sv.name, sv.version)

        async def one(i: int, prompt: Any) -> bytes:
            text = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
            events = self.generate(sv, GenerateRequest(f"{base}-{i}", prompt=text, params=params))
            parts = []
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for ev in events:
                    if ev.error:
                        raise ModelExecutionError(ev.error)
                    parts.append(ev.text)
            return "".join(parts).encode()

        outs = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts.ravel().tolist())))
        data = np.empty(len(outs), dtype=object)
        data[:] = outs
        out = Tensor("text_output", "BYTES", data.reshape(prompts.shape))
        return InferenceResponse(sv.name, sv.version, [out], request.id)

    @staticmethod
    def _sticky(policy: RoutingPolicy | None, header: Header | None
                ) -> float | None:  # fmt: skip
        """The draw an A/B test's sticky key gives (the same key, the same arm), or None."""
        if policy is None or policy.ab is None or policy.ab.sticky is None or header is None:
            return None
        key = header(policy.ab.sticky)
        return sticky_draw(key) if key else None

    # ---- infer -------------------------------------------------------------------------------

    def decoding(self, sv: ServedVersion) -> Decoding:
        return Decoding(self, sv)

    async def infer(
        self, sv: ServedVersion, request: InferenceRequest, decoding: Decoding | None = None
    ) -> InferenceResponse:
        """Run a decoded request on the version `version` chose (admitted by `admit`). Where
        the deployment has a routing policy, the revision's circuit breaker is consulted and,
        when it fails, the fallbacks answer (the response names who did)."""
        decode_ns = decoding.elapsed_ns if decoding is not None else 0
        routes = self.routes
        policy = routes.policies.get(sv.name)
        watched = routes.watched.get(sv.name) if routes.watched else None
        if policy is None and watched is None:
            return await self.engine.infer_version(sv, request, decode_ns)
        shadow = policy.shadow if policy is not None else None
        if shadow is not None:  # its copy of the request, before anything changes it
            shadowed = dataclasses.replace(request, on_queued=None, timeout_s=None)
        window = watched.get(sv.version) if watched is not None else None
        start = self._clock() if window is not None else 0.0
        try:
            response = await self._guarded(sv, request, decode_ns)
        except FAILURES as e:
            if window is not None:  # a canary analysis counts the revision's failure
                window.add(self._clock(), True, 0.0)
            response = await self._fall_back(sv, request, e)
        else:
            if window is not None:
                now = self._clock()
                window.add(now, False, now - start)
        if policy is None:
            return response
        if shadow is not None:
            self._mirror(shadow, sv, shadowed, response)
        if policy.ab is not None and request.id and response.model_name == sv.name:
            state = self.routes.abtest(sv.name)
            if state is not None:  # remembered for the feedback that may follow
                state.answered(request.id, response.model_version)
        return response

    def _mirror(
        self, shadow: Shadow, sv: ServedVersion, request: InferenceRequest,
        answered: InferenceResponse,
    ) -> None:  # fmt: skip
        """Send a copy of an answered request to the deployment's shadow, in the background:
        the caller has its answer already and never waits for the shadow's. At most
        `max_in_flight` copies run at once; beyond that one is dropped (and counted)."""
        if shadow.percent < 100 and self._draw() * 100 >= shadow.percent:
            return
        try:
            target = self.version(shadow.model or sv.name,
                                  str(shadow.version) if shadow.version else None)  # fmt: skip
        except InferdError:
            return  # not served here (now)
        if target is sv:
            return
        self._backgrounded(target)
        stats = self.routes.shadows.get(sv.name)
        if stats is None:
            stats = self.routes.shadows[sv.name] = ShadowStats(f"{target.name}:{target.version}")
        stats.sent += 1
        if stats.in_flight >= shadow.max_in_flight:
            stats.dropped += 1
            self._shadowed(sv, target, "dropped")
            return
        stats.in_flight += 1
        task = asyncio.create_task(self._shadow_call(sv, target, request, answered, stats))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    def _backgrounded(self, target: ServedVersion) -> None:
        """A revision that takes no share of its model's traffic and shadows another runs its
        workers at the lowest CPU priority, so that its copies use only the CPU the answering
        revision leaves idle (a revision that serves callers is left as it is)."""
        split = self.engine.model(target.name).traffic
        if split is None or target.version in split.versions:
            return
        for slot in target.scheduler.live():
            pid = getattr(slot.replica, "pid", None)
            if pid is not None and pid not in self.routes.backgrounded:
                self.routes.backgrounded.add(pid)
                limits.run_in_background(pid)

    async def _shadow_call(
        self, sv: ServedVersion, target: ServedVersion, request: InferenceRequest,
        answered: InferenceResponse, stats: ShadowStats,
    ) -> None:  # fmt: skip
        try:
            response = await self.engine.infer_version(target, request, 0)
        except Exception:  # the shadow's failure is its own: counted, never raised
            stats.failed += 1
            self._shadowed(sv, target, "failed")
            return
        finally:
            stats.in_flight -= 1
        agreed, diff = compare(answered.outputs, response.outputs)
        stats.record(agreed, diff)
        self._shadowed(sv, target, "agreed" if agreed else "differed", diff)

    def _shadowed(self, sv: ServedVersion, target: ServedVersion, outcome: str,
                  diff: float | None = None) -> None:  # fmt: skip
        if self.routing_metrics is not None:
            self.routing_metrics.shadow(sv.name, sv.version, target.name, target.version,
                                        outcome, diff)  # fmt: skip

    async def _guarded(
        self, sv: ServedVersion, request: InferenceRequest, decode_ns: int
    ) -> InferenceResponse:
        """Run on `sv` through its circuit breaker (where it has one)."""
        breaker = self.routes.breaker(sv.name, sv.version)
        if breaker is None:
            return await self.engine.infer_version(sv, request, decode_ns)
        now = self._clock()
        if not breaker.allow(now):
            self._breaker_state(sv, breaker.state)
            raise CircuitOpen(
                f"model '{sv.name}' version {sv.version}: circuit open after repeated failures",
                retry_after_s=max(breaker.retry_after(now), 1.0),
            )
        try:
            response = await self.engine.infer_version(sv, request, decode_ns)
        except FAILURES:
            breaker.record(True, self._clock())
            self._breaker_state(sv, breaker.state)
            raise
        except BaseException:
            breaker.release()  # the caller's mistake or departure says nothing of the revision
            raise
        breaker.record(False, self._clock())
        self._breaker_state(sv, breaker.state)
        return response

    async def _fall_back(
        self, sv: ServedVersion, request: InferenceRequest, error: InferdError
    ) -> InferenceResponse:
        """Try the deployment's fallbacks in order after `sv` failed with `error`; the first
        that answers does. All failing: the first failure is raised."""
        policy = self.routes.policies.get(sv.name)
        for fb in policy.fallbacks if policy is not None else ():
            try:
                target = self.version(fb.model or sv.name, str(fb.version) if fb.version else None)
            except InferdError:
                continue  # not served here now: the next one
            if target is sv:
                continue
            try:
                response = await self._guarded(target, request, 0)
            except InferdError:
                continue
            if self.routing_metrics is not None:
                self.routing_metrics.fallback(sv.name, sv.version, target.name, target.version)
            return response
        raise error

    def _breaker_state(self, sv: ServedVersion, state: str) -> None:
        if self.routing_metrics is not None:
            self.routing_metrics.breaker_state(sv.name, sv.version, STATE_VALUE[state])

    # ---- generate ----------------------------------------------------------------------------

    def generator(self, name: str, version: str | None = None,
                  header: Header | None = None) -> ServedVersion:  # fmt: skip
        """The version that generates for `name` (routed as `version` routes, header rules
        included): 501 for a model that does not generate text, 503 when it has no running
        generator, before anything is sent. Later calls for the same request name the version
        this returns."""
        sv, _ = self.generation.generator(name, self.version(name, version, header).version)
        return sv

    def generate(self, sv: ServedVersion, request: GenerateRequest) -> AsyncIterator[TokenEvent]:
        """Token events of one generation on the version `generator` chose; a failure raises
        (`ModelExecutionError`), and closing the iterator early aborts the generation (its slot
        frees at the next step). Under a canary analysis the revision's outcome is recorded,
        with the time to its first token as its latency."""
        events = self.generation.stream(sv.name, sv.version, request)
        watched = self.routes.watched.get(sv.name) if self.routes.watched else None
        window = watched.get(sv.version) if watched is not None else None
        if window is None:
            return events
        return self._observed(events, window)

    async def _observed(
        self, events: AsyncIterator[TokenEvent], window: Window
    ) -> AsyncIterator[TokenEvent]:
        """`events`, recording the generation's outcome in `window` (a caller that leaves
        early records nothing: that says nothing of the revision)."""
        start = self._clock()
        first: float | None = None
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            try:
                async for ev in events:
                    if first is None:
                        first = self._clock() - start
                    yield ev
            except FAILURES:
                window.add(self._clock(), True, 0.0)
                raise
        window.add(self._clock(), False, first if first is not None else self._clock() - start)

    async def chat_prompt(self, sv: ServedVersion, messages: list[dict[str, Any]]) -> str:
        return await self.generation.chat_prompt(sv.name, messages, sv.version)

    # ---- repository and statistics -----------------------------------------------------------

    def index(self, p: Principal, ready_only: bool = False) -> list[dict[str, Any]]:
        names = set(self.visible(p))
        return [m for m in self.engine.index(ready_only=ready_only) if m["name"] in names]

    async def load(
        self, name: str, parameter_names: list[str], raw_config: str | None = None
    ) -> None:
        await load_from_repository(self.engine, name, parameter_names, raw_config)

    async def unload(self, name: str) -> None:
        await self.engine.unload(name)

    def stats(
        self, p: Principal, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Statistics of one model (`name`), or of every model the caller may see."""
        stats = self.engine.stats(name, version)
        if name is None:
            names = set(self.visible(p))
            stats = [s for s in stats if s["name"] in names]
        return stats
