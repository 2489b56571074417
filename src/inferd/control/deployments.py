"""Deployments (what the data plane should serve) and the reconciler that makes it so.

The registry is the source of truth. The reconciler compares the deployments in the database with
what this node's engine serves and loads, reloads or unloads to match — on every change made
through this node at once, and every `reconcile_interval_s` for changes made through other nodes.
After a restart it finds nothing applied and loads every deployment again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import orjson

from inferd.auth.policy import require
from inferd.control.audit import Actor, Audit
from inferd.control.catalog import Catalog, compare_outputs
from inferd.core.errors import (
    Conflict,
    InferdError,
    InvalidField,
    InvalidInput,
    NotFound,
    Unprocessable,
)
from inferd.core.records import (
    Deployment,
    DeploymentConfig,
    DeploymentStatus,
    Model,
    ModelVersion,
    Scope,
    User,
    VersionStatus,
)
from inferd.core.routing import NO_ROUTING, Fallback, Routes, RoutingPolicy
from inferd.core.spec import ModelSpec, VersionPolicy, parse_model_config
from inferd.core.traffic import Revision, Split, primary
from inferd.core.trust import CODE_RUNTIMES, check_loosening, strip_loosening, with_operator_types
from inferd.registry.formats import CODE_FORMATS
from inferd.registry.store import RegistryStore
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelSource
from inferd.workers import limits

log = logging.getLogger("inferd.deploy")

CONFIG_FIELDS = {f.name for f in dataclasses.fields(DeploymentConfig)}
BATCHING_KEYS = {"max_batch_size", "max_queue_delay_microseconds", "max_queue_delay_ms",
                 "preferred_batch_sizes", "max_queue_size"}  # fmt: skip
RESOURCE_KEYS = {"cpu", "memory", "gpu"}


def parse_config(raw: Any, field: str = "config") -> DeploymentConfig:
    """A DeploymentConfig from JSON, naming the bad field (under `field`)."""
    if raw is None:
        return DeploymentConfig()
    if not isinstance(raw, dict):
        raise InvalidField(field, "must be an object")
    unknown = set(raw) - CONFIG_FIELDS
    if unknown:
        raise InvalidField(f"{field}.{sorted(unknown)[0]}", "unknown field")
    cfg = DeploymentConfig(**raw)
    for name in ("min_replicas", "max_replicas", "target_concurrency"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 64:
            raise InvalidField(f"{field}.{name}", "must be an integer from 0 to 64")
    if cfg.max_replicas < max(cfg.min_replicas, 1):
        raise InvalidField(f"{field}.max_replicas", "must be >= min_replicas and >= 1")
    if cfg.target_concurrency < 1:
        raise InvalidField(f"{field}.target_concurrency", "must be >= 1")
    s2z = cfg.scale_to_zero_after_s
    if s2z is not None and (not isinstance(s2z, int | float) or isinstance(s2z, bool) or s2z <= 0):
        raise InvalidField(f"{field}.scale_to_zero_after_s", "must be a positive number or null")
    if cfg.runtime is not None and not isinstance(cfg.runtime, str):
        raise InvalidField(f"{field}.runtime", "must be a string")
    for name, keys in (("batching", BATCHING_KEYS), ("resources", RESOURCE_KEYS)):
        d = getattr(cfg, name)
        if not isinstance(d, dict):
            raise InvalidField(f"{field}.{name}", "must be an object")
        bad = set(d) - keys
        if bad:
            raise InvalidField(f"{field}.{name}.{sorted(bad)[0]}", "unknown field")
    for k, v in cfg.resources.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise InvalidField(f"{field}.resources.{k}", "must be a number >= 0")
    if not isinstance(cfg.parameters, dict):
        raise InvalidField(f"{field}.parameters", "must be an object")
    if cfg.instance_kind not in ("process", "thread"):
        raise InvalidField(f"{field}.instance_kind", "must be 'process' or 'thread'")
    if not isinstance(cfg.response_cache, bool):
        raise InvalidField(f"{field}.response_cache", "must be true or false")
    return cfg


def check_config_trust(
    actor: Actor, owner: User, cfg: DeploymentConfig, previous: DeploymentConfig | None,
    field: str = "config",
) -> None:  # fmt: skip
    """Refuse config that loosens a load-time safety check (core.trust): it needs a trusted owner,
    and callables in a skops allow-list need an admin. What the stored config already holds (an
    admin put it there) may be sent back unchanged by the owner."""
    params = cfg.parameters
    if previous is not None and owner.trusted and isinstance(params, dict):
        # unchanged values were checked when written; an untrusted owner keeps nothing
        params = {k: v for k, v in params.items() if previous.parameters.get(k) != v}
    check_loosening(params, field=f"{field}.parameters", owner_trusted=owner.trusted,
                    actor_admin=actor.principal.is_admin, runtime=cfg.runtime,
                    runtime_field=f"{field}.runtime")  # fmt: skip


def deployment_spec(
    model: Model,
    version: ModelVersion,
    cfg: DeploymentConfig,
    trusted: bool,
    operator_types: list[str] | None = None,
    field: str = "config",
    document: dict[str, Any] | None = None,
) -> ModelSpec:
    """The data plane's ModelSpec for a deployed version (validated; errors name the field,
    under `field`: where `cfg` came from). `document`: a pipeline version's graph."""
    b = dict(cfg.batching)
    mbs = b.pop("max_batch_size", 0)
    if not isinstance(mbs, int) or isinstance(mbs, bool) or mbs < 0:
        raise InvalidInput(f"{field}.batching.max_batch_size: must be an integer >= 0")

    def io(specs: tuple[dict[str, Any], ...], what: str) -> list[dict[str, Any]]:
        out = []
        for t in specs:
            shape = list(t["shape"])
            if mbs > 0:
                if not shape or shape[0] != -1:
                    raise InvalidInput(
                        f"{field}.batching.max_batch_size: {what} '{t['name']}' has no variable "
                        "first dimension to batch on"
                    )
                shape = shape[1:]
            out.append({"name": t["name"], "datatype": t["datatype"], "shape": shape})
        return out

    runtime = cfg.runtime or version.runtime or None
    if cfg.instance_kind == "thread" and (
        version.artifact_format in CODE_FORMATS or runtime in CODE_RUNTIMES
    ):
        raise Unprocessable(
            f"{field}.instance_kind: 'thread' runs the model inside the server process, outside "
            f"a worker's isolation; a model whose files can run code ('{version.artifact_format}'"
            f" with runtime '{runtime}') runs in worker processes only ('process')"
        )
    raw: dict[str, Any] = {
        "runtime": runtime,
        "max_batch_size": mbs,
        "instances": max(cfg.min_replicas, 1),
        "instance_kind": cfg.instance_kind,
        "resources": dict(cfg.resources) or None,
        # refused when written (check_config_trust); dropped here too, so that an owner whose
        # trust was withdrawn after the config was stored loads nothing loosened
        "parameters": with_operator_types(
            strip_loosening(cfg.parameters, trusted), operator_types or []
        ),
        "trusted": trusted,
        "required": False,
        # uploaded code never reaches the network, trusted owner or not (workers.* docs)
        "network": False,
        # nor does the server read an untrusted owner's files (a tokenizer's chat template)
        "untrusted_files": not trusted,
        "inputs": io(version.inputs, "input"),
        "outputs": io(version.outputs, "output"),
        "response_cache": {"enable": True} if cfg.response_cache else None,
    }
    if cfg.max_replicas > cfg.min_replicas or cfg.min_replicas == 0:
        raw["autoscaling"] = {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_concurrency": cfg.target_concurrency,
            "scale_to_zero_after_s": cfg.scale_to_zero_after_s if cfg.min_replicas == 0 else None,
        }
        if cfg.min_replicas == 0 and cfg.scale_to_zero_after_s is not None:
            # an idle time shorter than the default downscale delay is meant literally
            raw["autoscaling"]["downscale_delay_s"] = min(30.0, cfg.scale_to_zero_after_s)
    elif cfg.scale_to_zero_after_s is not None:
        raise InvalidInput(f"{field}.scale_to_zero_after_s: needs min_replicas 0")
    if "max_queue_size" in b:
        raw["max_queue_size"] = b.pop("max_queue_size")
    if mbs > 0:
        raw["dynamic_batching"] = b
    elif b:
        raise InvalidInput(f"{field}.batching: queue delay and sizes need max_batch_size > 0")
    if document is not None:  # a pipeline: its steps' models run, it has no runtime of its own
        raw.update(platform="pipeline", pipeline=document, runtime=None)
    raw = {k: v for k, v in raw.items() if v is not None}
    try:
        return parse_model_config(model.name, raw)
    except InvalidInput as e:
        raise InvalidInput(f"{field}: {e.message}") from None


class Deployments:
    """Deployment use-cases plus the reconciler loop."""

    def __init__(
        self,
        store: RegistryStore,
        catalog: Catalog,
        audit: Audit,
        engine: InferenceEngine,
        interval_s: float = 5.0,
        routes: Routes | None = None,
    ) -> None:
        self.store = store
        #: The routing policies the data plane applies (set here when a deployment applies).
        self.routes = routes if routes is not None else Routes()
        self.catalog = catalog
        self.audit = audit
        self.engine = engine
        self.interval_s = interval_s
        #: deployment id -> (served name, generation applied)
        self.applied: dict[str, tuple[str, int]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ---- use-cases -------------------------------------------------------------------------

    async def _visible(self, actor: Actor, dep: Deployment) -> tuple[Deployment, Model]:
        try:
            model = await self.store.get_model(dep.model_id)
            self.catalog.by_name.setdefault(model.name, model)
            await self.catalog.find(actor, model.name)
        except NotFound:
            raise NotFound("deployment not found") from None
        return dep, model

    async def create(
        self,
        actor: Actor,
        name: str,
        version: int | None,
        cfg: DeploymentConfig,
        traffic: tuple[Revision, ...] | None = None,
        routing: RoutingPolicy = NO_ROUTING,
    ) -> Deployment:
        """Deploy a version (default: the newest ready one), or several revisions with their
        traffic weights (`traffic`; the one with the largest share is the deployment's
        `version`), with a routing policy (header rules, fallbacks, a circuit breaker)."""
        model = await self.catalog.manage(actor, name)
        if model.system:
            raise Conflict("system models are served from the model repository folder")
        existing = await self.store.find_deployment(model.id)
        if existing is not None:
            raise Conflict(
                f"model '{model.name}' already has a deployment ({existing.id}); update it instead"
            )
        if traffic is not None and version is not None:
            raise InvalidField("traffic", "give either a version or a traffic split, not both")
        owner = await self.store.get_user(model.owner_id)
        check_config_trust(actor, owner, cfg, None)
        mv, split = await self._revisions(actor, model, version, traffic, cfg, owner, ())
        await self._check_routing(actor, model, routing, split or (Revision(mv.version, 100),))
        dep = await self.store.create_deployment(
            model.id, mv.version, cfg, actor.principal.user_id, split, routing
        )
        await self.audit.record(actor, "deployment.create", "deployment", dep.id,
                                model=model.name, version=mv.version,
                                traffic=_traffic_doc(dep.revisions()),
                                routing=dep.routing.doc())  # fmt: skip
        self.wake()
        return dep

    async def _revisions(
        self,
        actor: Actor,
        model: Model,
        version: int | None,
        traffic: tuple[Revision, ...] | None,
        cfg: DeploymentConfig,
        owner: User,
        previous: tuple[Revision, ...],
    ) -> tuple[ModelVersion, tuple[Revision, ...]]:
        """The primary version and the split to store (empty: one revision takes all), each
        revision checked ready and loadable before anything is stored. A revision's own
        config is the one given (checked like the deployment's), else the one it had in
        `previous`; None: the deployment's `cfg`."""
        if not traffic:
            mv = await self._ready_version(model, version)
            deployment_spec(model, mv, cfg, owner.trusted)  # validate before storing
            return mv, ()
        had = {r.version: r.config for r in previous}
        resolved = []
        for i, r in enumerate(traffic):
            try:
                rv = await self._ready_version(model, r.version)
            except (NotFound, Conflict) as e:
                raise InvalidField(f"traffic[{i}].version", e.message) from None
            own = r.config if r.config_given else had.get(r.version)
            if r.config_given and own is not None:
                check_config_trust(actor, owner, own, had.get(r.version),
                                   f"traffic[{i}].config")  # fmt: skip
            deployment_spec(model, rv, own or cfg, owner.trusted,
                            field="config" if own is None else f"traffic[{i}].config")  # fmt: skip
            resolved.append(Revision(r.version, r.weight, own))
        if len(resolved) == 1 and resolved[0].config is not None:
            raise InvalidField("traffic[0].config", "one revision alone runs with the "
                               "deployment's config: set `config` instead")  # fmt: skip
        mv = await self._ready_version(model, primary(traffic))
        return mv, tuple(resolved) if len(resolved) > 1 else ()

    async def _check_routing(
        self, actor: Actor, model: Model, policy: RoutingPolicy, revisions: tuple[Revision, ...]
    ) -> None:
        """A rule or fallback may only name a revision this deployment serves, or a model the
        caller may see (fallbacks to other models); no chain of fallbacks may lead back to
        this model. Each refusal names the field."""
        served = {r.version for r in revisions}
        for i, rule in enumerate(policy.rules):
            if rule.version not in served:
                raise InvalidField(f"routing.rules[{i}].version",
                                   f"version {rule.version} is not a revision of this "
                                   f"deployment (it serves {sorted(served)})")  # fmt: skip
        others: dict[str, RoutingPolicy] = {}
        for i, fb in enumerate(policy.fallbacks):
            if await self._check_target(actor, model, fb, served, f"routing.fallbacks[{i}]"):
                others[str(fb.model)] = NO_ROUTING
        if policy.shadow is not None:
            target = Fallback(policy.shadow.model, policy.shadow.version)
            await self._check_target(actor, model, target, served, "routing.shadow")
        if others:  # a fallback chain that comes back here would be a cycle
            for dep in await self.store.list_deployments():
                m = await self.store.get_model(dep.model_id)
                others[m.name] = dep.routing
            seen, todo = set(), [fb.model for fb in policy.fallbacks if fb.model]
            while todo:
                name = todo.pop()
                if name == model.name:
                    raise InvalidField("routing.fallbacks", "the fallbacks lead back to "
                                       f"'{model.name}' (a cycle)")  # fmt: skip
                if name in seen:
                    continue
                seen.add(name)
                todo += [fb.model for fb in others.get(name, NO_ROUTING).fallbacks
                         if fb.model and fb.model != name]  # fmt: skip

    async def _check_target(
        self, actor: Actor, model: Model, target: Fallback, served: set[int], where: str
    ) -> bool:
        """A fallback's or shadow's target: another revision this deployment serves, or a model
        the caller may see (and a version it has). True when it is another model."""
        if target.model is None or target.model == model.name:
            if target.version is None or target.version not in served:
                raise InvalidField(f"{where}.version", "a target in this model must name "
                                   f"another of its revisions ({sorted(served)})")  # fmt: skip
            return False
        try:
            other = await self.catalog.find(actor, target.model)
        except NotFound:
            raise InvalidField(f"{where}.model", f"no model '{target.model}'") from None
        if target.version is not None:
            try:
                await self.store.get_version(other.id, target.version)
            except NotFound:
                why = f"model '{target.model}' has no version {target.version}"
                raise InvalidField(f"{where}.version", why) from None
        return True

    async def _ready_version(self, model: Model, version: int | None) -> ModelVersion:
        if version is None:
            ready = [v for v in await self.store.list_versions(model.id)
                     if v.status == VersionStatus.READY]  # fmt: skip
            if not ready:
                raise Conflict(f"model '{model.name}' has no ready version to deploy")
            return ready[-1]
        try:
            mv = await self.store.get_version(model.id, version)
        except NotFound:
            raise NotFound(f"model '{model.name}' has no version {version}") from None
        if mv.status != VersionStatus.READY:
            raise Conflict(f"version {version} is {mv.status}, not ready")
        return mv

    async def list(self, actor: Actor) -> list[tuple[Deployment, Model]]:
        require(actor.principal, Scope.INFER)
        out = []
        for dep in await self.store.list_deployments():
            try:
                out.append(await self._visible(actor, dep))
            except NotFound:
                continue
        return out

    async def get(self, actor: Actor, deployment_id: str) -> tuple[Deployment, Model]:
        require(actor.principal, Scope.INFER)
        return await self._visible(actor, await self.store.get_deployment(deployment_id))

    async def _managed(self, actor: Actor, deployment_id: str) -> tuple[Deployment, Model]:
        dep, model = await self.get(actor, deployment_id)
        await self.catalog.manage(actor, model.name)
        return dep, model

    async def update(
        self,
        actor: Actor,
        deployment_id: str,
        version: int | None,
        cfg: DeploymentConfig | None,
        traffic: tuple[Revision, ...] | None = None,
        routing: RoutingPolicy | None = None,
    ) -> Deployment:
        """Change the config, move all traffic to one `version`, set a traffic split, or set
        the routing policy (`NO_ROUTING` removes it). Revisions already served keep their
        replicas (a weight or routing change reloads nothing)."""
        dep, model = await self._managed(actor, deployment_id)
        if traffic is not None and version is not None:
            raise InvalidField("traffic", "give either a version or a traffic split, not both")
        owner = await self.store.get_user(model.owner_id)
        if cfg is not None:
            check_config_trust(actor, owner, cfg, dep.config)
        if traffic is None and version is None:  # the config alone: the revisions stay
            traffic = dep.traffic or None
            version = None if traffic else dep.version
        mv, split = await self._revisions(actor, model, version, traffic, cfg or dep.config,
                                          owner, dep.traffic)  # fmt: skip
        await self._check_routing(actor, model, dep.routing if routing is None else routing,
                                  split or (Revision(mv.version, 100),))  # fmt: skip
        dep = await self.store.update_deployment(dep.id, version=mv.version, config=cfg,
                                                 traffic=split, routing=routing)  # fmt: skip
        await self.audit.record(actor, "deployment.update", "deployment", dep.id,
                                version=mv.version, traffic=_traffic_doc(dep.revisions()),
                                routing=dep.routing.doc())  # fmt: skip
        self.wake()
        return dep

    async def delete(self, actor: Actor, deployment_id: str) -> Deployment:
        dep, _ = await self._managed(actor, deployment_id)
        await self.store.delete_deployment(dep.id)
        await self.audit.record(actor, "deployment.delete", "deployment", dep.id)
        self.wake()
        return dep

    async def test(
        self, actor: Actor, deployment_id: str, version: int | None = None
    ) -> dict[str, Any]:
        """Run a deployed version's sample input (the primary's unless `version` names another
        revision) and compare with its sample output."""
        dep, model = await self.get(actor, deployment_id)
        if version is not None and version not in {r.version for r in dep.revisions()}:
            raise Conflict(f"version {version} is not a revision of this deployment")
        mv = await self.store.get_version(model.id, version or dep.version)
        if mv.sample_input is None:
            raise Conflict(f"version {mv.version} has no sample input to test with")
        request = self.catalog.codec.decode(mv.sample_input)
        response = await self.engine.infer(model.name, str(mv.version), request)
        actual = self.catalog.codec.encode(response, request)
        problems = compare_outputs(mv.sample_output, actual) if mv.sample_output else []
        return {"passed": not problems, "problems": problems, "output": actual,
                "expected": mv.sample_output}  # fmt: skip

    # ---- reconciler ------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self.reconcile()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reconcile()
            except InferdError as e:  # database down: try again next round
                log.warning("reconcile failed: %s", e.message)
            except Exception:
                log.exception("reconcile failed")

    async def reconcile(self) -> None:
        """One pass: load what is desired and not applied, unload what is no longer desired."""
        async with self._lock:
            await self.catalog.refresh()
            deployments = await self.store.list_deployments()
            wanted = {d.id: d for d in deployments}
            for dep_id, (name, _) in list(self.applied.items()):
                if dep_id not in wanted:
                    del self.applied[dep_id]
                    log.info("deployment %s deleted: unloading %s", dep_id, name)
                    self.routes.forget(name)
                    await self.engine.forget(name)
            todo = [d for d in deployments
                    if self.applied.get(d.id, ("", 0))[1] != d.generation]  # fmt: skip
            await asyncio.gather(*(self._apply(d) for d in todo))

    async def _apply(self, dep: Deployment) -> None:
        try:
            model = await self.store.get_model(dep.model_id)
            owner = await self.store.get_user(model.owner_id)
            specs: dict[str, ModelSpec] = {}
            root: Path | None = None
            for r in dep.revisions():  # each with its version's signature and its own config
                mv = await self.store.get_version(model.id, r.version)
                path = await self.catalog.materialize(model, mv.version)
                document = None
                if mv.runtime == "pipeline":
                    document = orjson.loads((path / "pipeline.json").read_bytes())
                specs[str(mv.version)] = deployment_spec(
                    model, mv, r.config or dep.config, owner.trusted,
                    self.catalog.settings.skops_trusted_types, document=document,
                )  # fmt: skip
                root = path.parent
            assert root is not None
            versions = tuple(specs)
            spec = dataclasses.replace(
                specs[str(dep.version)], version_policy=VersionPolicy("specific", 1, versions)
            )
            split = (
                Split.of({str(r.version): r.weight for r in dep.traffic}) if dep.traffic else None
            )
            source = ModelSource(spec, root, versions, specs, keep_unchanged=True, traffic=split)
            await self.engine.load_source(source)
            # once the revisions it names are served (unchanged: the breakers keep their state)
            self.routes.set(model.name, dep.routing)
            self._foreground(model.name, dep)
        except InferdError as e:
            self.applied[dep.id] = (self._name_of(dep), dep.generation)
            log.warning("deployment %s failed: %s", dep.id, e.message)
            await self._status(dep, DeploymentStatus.FAILED, e.message)
            return
        self.applied[dep.id] = (model.name, dep.generation)
        await self._status(dep, DeploymentStatus.READY, "")

    def _foreground(self, name: str, dep: Deployment) -> None:
        """A revision that takes traffic again after it only shadowed gets its workers' normal
        CPU priority back (the data plane lowered it)."""
        for r in dep.revisions():
            if r.weight == 0 or not self.routes.backgrounded:
                continue
            with contextlib.suppress(InferdError):
                for slot in self.engine.version(name, str(r.version)).scheduler.live():
                    pid = getattr(slot.replica, "pid", None)
                    if pid in self.routes.backgrounded:
                        self.routes.backgrounded.discard(pid)
                        if not limits.run_in_foreground(pid):
                            log.warning("%s version %s: its worker %s keeps a background CPU "
                                        "priority (raising it needs root or CAP_SYS_NICE)",
                                        name, r.version, pid)  # fmt: skip

    def _name_of(self, dep: Deployment) -> str:
        return next((m.name for m in self.catalog.by_name.values() if m.id == dep.model_id), "")

    async def _status(self, dep: Deployment, status: DeploymentStatus, reason: str) -> None:
        try:
            await self.store.set_deployment_status(dep.id, status, reason[:2000], dep.generation)
        except NotFound:
            pass  # deleted meanwhile; the next pass unloads it


def _traffic_doc(revisions: tuple[Revision, ...]) -> dict[str, int]:
    return {str(r.version): r.weight for r in revisions}
