"""Rollouts of a deployment to another version: blue-green, and canary with automated analysis.

Blue-green (`Rollouts.blue_green`): the new version is brought up as a revision that takes no
traffic (every replica loaded, as any revision is before it is served), optionally its sample
test must pass on it, then 100 % of the traffic moves to it in one weight change (nothing
reloads, no request fails). The previous version stays loaded at weight 0 for
`keep_previous_s`: `rollback` moves the traffic back at once, with no load. When the time is up
the previous revision is dropped. Each step is an event on the rollout (shown on the deployment)
and an audit entry.

Canary (`Rollouts.canary`): the new version is brought up at weight 0 like a blue-green one,
then takes the plan's steps of the traffic (5 % → 25 % → 50 % → 100 %, say). During each step the
data plane records every answer of both revisions (outcome and latency, `Routes.watched`); every
`interval_s` the rollout compares the canary with the stable revision over the analysis window
(`core.canary.judge`: error rate, p50/p95/p99). A failed check rolls back at once (the stable
version serves alone again, the canary unloads); a step ends once `dwell_s` has passed with a
passing check; after the last step the canary is promoted (serves alone). Every decision is an
event on the rollout and an audit entry, with the figures it used. `promote` and `rollback`
end a canary by hand.

The rollout's state is this node's (in memory), and so is the canary's analysis: it sees the
requests this node answers. After a restart an unfinished rollout is not resumed: the
deployment keeps the split it had (the previous revision of a blue-green one stays at weight 0)
until it is changed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inferd.control.audit import Actor, Audit
from inferd.control.deployments import Deployments
from inferd.core.canary import FAIL, PASS, CanaryPlan, Verdict, Window, judge
from inferd.core.errors import Conflict, InferdError, InvalidField, Unprocessable
from inferd.core.records import Deployment, DeploymentConfig, DeploymentStatus, Model
from inferd.core.traffic import Revision

log = logging.getLogger("inferd.rollouts")

#: Longest a rollout keeps the previous version warm (a day).
MAX_KEEP_S = 86_400.0


@dataclass
class Rollout:
    """One deployment's latest rollout: where from, where to, its phase and what happened."""

    strategy: str
    previous: int
    version: int
    keep_previous_s: float
    #: blue-green: loading → testing → switched → done | rolled_back | failed;
    #: canary: loading → progressing → promoted | rolled_back | failed | interrupted
    phase: str = "loading"
    events: list[dict[str, Any]] = field(default_factory=list)
    #: A canary's plan, the share it has now and its latest analysis.
    plan: CanaryPlan | None = None
    weight: int = 0
    analysis: Verdict | None = None
    _expiry: asyncio.Task[None] | None = None
    _task: asyncio.Task[None] | None = None

    def event(self, what: str, **detail: Any) -> None:
        self.events.append({"at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "event": what, **detail})  # fmt: skip

    def doc(self) -> dict[str, Any]:
        out = {"strategy": self.strategy, "from": self.previous, "to": self.version,
               "phase": self.phase, "keep_previous_s": self.keep_previous_s,
               "events": list(self.events)}  # fmt: skip
        if self.plan is not None:
            analysis = self.analysis.doc() if self.analysis is not None else None
            out |= {"weight": self.weight, "plan": self.plan.doc(), "analysis": analysis}
        return out

    @property
    def active(self) -> bool:
        """Still moving (a rollback or a promotion would interfere)."""
        return self.phase in ("loading", "testing", "progressing")


def _why(verdict: Verdict) -> str:
    return "analysis failed: " + "; ".join(verdict.reasons)


class Rollouts:
    """Blue-green and canary rollouts, promotions and rollbacks (use-cases over
    `Deployments`)."""

    def __init__(
        self,
        deployments: Deployments,
        audit: Audit,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.deployments = deployments
        self.audit = audit
        self._clock, self._sleep = clock, sleep
        #: deployment id -> its latest rollout
        self.latest: dict[str, Rollout] = {}

    async def blue_green(
        self,
        actor: Actor,
        deployment_id: str,
        version: int,
        test: bool = False,
        keep_previous_s: float = 300.0,
        ready_timeout_s: float = 600.0,
    ) -> tuple[Deployment, Rollout]:
        """Bring `version` up beside the served one, test it (`test`), switch all traffic to it
        at once, keep the previous one warm for `keep_previous_s` (for `rollback`)."""
        if isinstance(keep_previous_s, bool) or not 0 <= keep_previous_s <= MAX_KEEP_S:
            raise InvalidField("keep_previous_s", f"must be from 0 to {MAX_KEEP_S:g} seconds")
        dep, model = await self._begin(actor, deployment_id, version, "a blue-green")
        ro = Rollout("blue_green", dep.version, version, keep_previous_s)
        self.latest[dep.id] = ro
        ro.event("started", version=version, previous=dep.version)
        try:
            # the new version as a revision that takes nothing: loaded, not served
            dep = await self._set(actor, dep.id, {dep.version: 100, version: 0}, ready_timeout_s)
            ro.event("ready", version=version)
            if test:
                ro.phase = "testing"
                result = await self.deployments.test(actor, dep.id, version)
                if not result["passed"]:
                    ro.event("test_failed", problems=result["problems"])
                    raise Unprocessable(f"version {version} failed its sample test: "
                                        f"{'; '.join(result['problems'])}")  # fmt: skip
                ro.event("test_passed")
            dep = await self._set(actor, dep.id, {ro.previous: 0, version: 100}, ready_timeout_s)
        except BaseException as e:
            ro.phase = "failed"
            ro.event("failed", reason=getattr(e, "message", str(e)) or type(e).__name__)
            with contextlib.suppress(InferdError):  # _drop logs it; the first failure stands
                await self._drop(actor, deployment_id, keep=ro.previous)
            raise
        ro.phase = "switched"
        ro.event("switched", version=version, previous_warm_for_s=keep_previous_s)
        await self.audit.record(actor, "deployment.rollout", "deployment", dep.id,
                                model=model.name, strategy="blue_green",
                                previous=ro.previous, version=version)  # fmt: skip
        ro._expiry = asyncio.create_task(self._expire(actor, dep.id, ro))
        return dep, ro

    async def _begin(
        self, actor: Actor, deployment_id: str, version: int, what: str
    ) -> tuple[Deployment, Model]:
        """The checks every rollout starts with: the deployment serves one version, not
        `version`, and no other rollout of it moves (one that is warm is cancelled)."""
        dep, model = await self.deployments.get(actor, deployment_id)
        if dep.traffic:
            raise Conflict("the deployment splits its traffic among revisions; "
                           f"{what} rollout starts from one served version")  # fmt: skip
        if version == dep.version:
            raise InvalidField("version", f"version {version} is the one served already")
        self._replace(dep.id)
        return dep, model

    def _replace(self, deployment_id: str) -> None:
        """Make way for a new rollout of the deployment (refused while one is moving)."""
        old = self.latest.get(deployment_id)
        if old is not None and old.active:
            raise Conflict(f"a rollout to version {old.version} is in progress "
                           f"(phase {old.phase}); promote or roll it back first")  # fmt: skip
        if old is not None and old._expiry is not None:
            old._expiry.cancel()

    async def canary(
        self,
        actor: Actor,
        deployment_id: str,
        version: int,
        plan: CanaryPlan,
        config: DeploymentConfig | None = None,
        ready_timeout_s: float = 600.0,
    ) -> tuple[Deployment, Rollout]:
        """Bring `version` up beside the served one (with its own runtime `config`, else the
        deployment's), then hand it the plan's steps of the traffic in the background,
        analysed as it goes (see the module's docstring). Returns once the canary is loaded
        and its first step applied."""
        dep, model = await self._begin(actor, deployment_id, version, "a canary")
        ro = Rollout("canary", dep.version, version, 0.0, plan=plan)
        self.latest[dep.id] = ro
        ro.event("started", version=version, previous=dep.version, plan=plan.doc())
        try:
            dep = await self._set(actor, dep.id, {dep.version: 100, version: 0}, ready_timeout_s,
                                  {version: config} if config is not None else None)  # fmt: skip
            ro.event("ready", version=version)
            dep = await self._step(actor, dep.id, ro, 0, model.name)
        except BaseException as e:
            ro.phase = "failed"
            ro.event("failed", reason=getattr(e, "message", str(e)) or type(e).__name__)
            self._unwatch(model.name)
            with contextlib.suppress(InferdError):  # _drop logs it; the first failure stands
                await self._drop(actor, deployment_id, keep=ro.previous)
            raise
        ro.phase = "progressing"
        await self.audit.record(actor, "deployment.canary.start", "deployment", dep.id,
                                model=model.name, previous=ro.previous, version=version,
                                plan=plan.doc())  # fmt: skip
        ro._task = asyncio.create_task(self._progress(actor, dep.id, ro, model.name))
        return dep, ro

    async def _step(
        self, actor: Actor, deployment_id: str, ro: Rollout, i: int, name: str
    ) -> Deployment:
        """Give the canary the plan's step `i` of the traffic, with fresh windows."""
        assert ro.plan is not None
        weight = ro.plan.steps[i]
        self.deployments.routes.watched[name] = {
            str(ro.previous): Window(), str(ro.version): Window(),
        }  # fmt: skip
        dep = await self._set(actor, deployment_id,
                              {ro.previous: 100 - weight, ro.version: weight}, 600.0)  # fmt: skip
        ro.weight = weight
        ro.event("step", step=i + 1, weight=weight)
        return dep

    async def _progress(self, actor: Actor, deployment_id: str, ro: Rollout, name: str) -> None:
        """Run the canary's steps from the first (applied already) to promotion or rollback."""
        assert ro.plan is not None
        plan = ro.plan
        try:
            for i in range(len(plan.steps)):
                if i:
                    await self._step(actor, deployment_id, ro, i, name)
                verdict = await self._dwell(deployment_id, ro, name)
                if verdict is None:
                    return
                if verdict.state == FAIL:
                    await self._rolled_back(actor, deployment_id, ro, name, _why(verdict))
                    return
                ro.event("step_passed", step=i + 1, weight=ro.weight, **verdict.doc())
                await self.audit.record(actor, "deployment.canary.step", "deployment",
                                        deployment_id, model=name, version=ro.version,
                                        weight=ro.weight, **verdict.doc())  # fmt: skip
                if ro.weight == 100:
                    break
            if not plan.auto_promote:  # held at its last step, still analysed, until promoted
                ro.event("awaiting_promotion", weight=ro.weight)
                verdict = await self._dwell(deployment_id, ro, name, hold=True)
                if verdict is not None:
                    await self._rolled_back(actor, deployment_id, ro, name, _why(verdict))
                return
            if await self._still_ours(deployment_id, ro):
                await self._promoted(actor, deployment_id, ro, name, "analysis passed")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a failure to apply a step: the stable version serves again
            log.exception("canary of %s failed", deployment_id)
            ro.phase = "failed"
            ro.event("failed", reason=getattr(e, "message", str(e)) or type(e).__name__)
            self._unwatch(name)
            with contextlib.suppress(InferdError):  # _drop logs it; the first failure stands
                await self._drop(actor, deployment_id, keep=ro.previous)

    async def _dwell(
        self, deployment_id: str, ro: Rollout, name: str, hold: bool = False
    ) -> Verdict | None:
        """Check the canary every `interval_s` until the step's `dwell_s` has passed with a
        passing check (returned), or a check fails (returned at once); with `hold`, until a
        check fails. None: the deployment was changed by hand, the rollout stops."""
        assert ro.plan is not None
        plan, started, waiting = ro.plan, self._clock(), False
        while True:
            await self._sleep(plan.interval_s)
            if not await self._still_ours(deployment_id, ro):
                return None
            now = self._clock()
            windows = self.deployments.routes.watched.get(name, {})
            stable, canary = windows.get(str(ro.previous)), windows.get(str(ro.version))
            if stable is None or canary is None:
                raise InferdError(f"the canary analysis of '{name}' lost its windows")
            a = plan.analysis
            verdict = ro.analysis = judge(stable.sample(now, a.window_s),
                                          canary.sample(now, a.window_s), a)  # fmt: skip
            if verdict.state == FAIL:
                return verdict
            if now - started >= plan.dwell_s and not hold:
                if verdict.state == PASS:
                    return verdict
                if not waiting:  # the step lasts until the canary has answered enough
                    waiting = True
                    ro.event("waiting_for_traffic", weight=ro.weight, **verdict.doc())

    async def _still_ours(self, deployment_id: str, ro: Rollout) -> bool:
        """Is the deployment still split as the rollout left it? (Someone may have changed it
        by hand: the rollout then stops where it is.)"""
        dep = await self.deployments.store.get_deployment(deployment_id)
        split = {(r.version, r.weight) for r in dep.traffic}
        if split == {(ro.previous, 100 - ro.weight), (ro.version, ro.weight)}:
            return True
        ro.phase = "interrupted"
        ro.event("interrupted", reason="the deployment's traffic was changed by hand")
        return False

    async def _rolled_back(
        self, actor: Actor, deployment_id: str, ro: Rollout, name: str, why: str
    ) -> None:
        """The stable version serves alone again (the canary unloads); recorded with the
        latest analysis's figures."""
        self._unwatch(name)
        await self._drop(actor, deployment_id, keep=ro.previous)
        ro.phase, ro.weight = "rolled_back", 0
        figures = ro.analysis.doc() if ro.analysis is not None else {}
        ro.event("rolled_back", version=ro.previous, reason=why, **figures)
        await self.audit.record(actor, "deployment.canary.rollback", "deployment",
                                deployment_id, model=name, version=ro.previous,
                                from_version=ro.version, reason=why, **figures)  # fmt: skip

    async def _promoted(
        self, actor: Actor, deployment_id: str, ro: Rollout, name: str, why: str
    ) -> None:
        self._unwatch(name)
        dep = await self.deployments.store.get_deployment(deployment_id)
        own = next((r.config for r in dep.traffic if r.version == ro.version), None)
        await self.deployments.update(actor, deployment_id, ro.version, own, None)
        ro.phase, ro.weight = "promoted", 100
        figures = ro.analysis.doc() if ro.analysis is not None else {}
        ro.event("promoted", version=ro.version, reason=why, **figures)
        await self.audit.record(actor, "deployment.canary.promote", "deployment",
                                deployment_id, model=name, version=ro.version,
                                previous=ro.previous, reason=why, **figures)  # fmt: skip

    def _unwatch(self, name: str) -> None:
        self.deployments.routes.watched.pop(name, None)

    async def promote(self, actor: Actor, deployment_id: str) -> tuple[Deployment, Rollout]:
        """End a progressing canary now: the canary serves alone."""
        dep, model = await self.deployments.get(actor, deployment_id)
        ro = self.latest.get(dep.id)
        if ro is None or ro.strategy != "canary" or ro.phase != "progressing":
            raise Conflict("no canary in progress to promote (deploy the version you want)")
        if ro._task is not None:
            ro._task.cancel()
        await self._promoted(actor, dep.id, ro, model.name, "promoted by hand")
        return await self.deployments.store.get_deployment(dep.id), ro

    async def rollback(self, actor: Actor, deployment_id: str) -> tuple[Deployment, Rollout]:
        """Move all traffic back to the previous version: a progressing canary's stable one,
        or a switched blue-green rollout's while it is still warm."""
        dep, model = await self.deployments.get(actor, deployment_id)
        ro = self.latest.get(dep.id)
        if ro is not None and ro.strategy == "canary" and ro.phase == "progressing":
            if ro._task is not None:
                ro._task.cancel()
            await self._rolled_back(actor, dep.id, ro, model.name, "rolled back by hand")
            return await self.deployments.store.get_deployment(dep.id), ro
        if ro is None or ro.phase != "switched":
            raise Conflict("no switched rollout or canary in progress to roll back (deploy "
                           "the version you want)")  # fmt: skip
        if ro._expiry is not None:
            ro._expiry.cancel()
        dep = await self._set(actor, dep.id, {ro.previous: 100, ro.version: 0}, 600.0)
        ro.phase = "rolled_back"
        ro.event("rolled_back", version=ro.previous)
        await self.audit.record(actor, "deployment.rollback", "deployment", dep.id,
                                model=model.name, version=ro.previous,
                                from_version=ro.version)  # fmt: skip
        await self._drop(actor, dep.id, keep=ro.previous)
        return await self.deployments.store.get_deployment(dep.id), ro

    async def _set(
        self, actor: Actor, deployment_id: str, weights: dict[int, int], timeout_s: float,
        configs: dict[int, DeploymentConfig] | None = None,
    ) -> Deployment:  # fmt: skip
        """Apply a split (revisions keep their own configs, `configs` gives new ones) and wait
        until this node serves it (failed: raised)."""
        configs = configs or {}
        traffic = tuple(Revision(v, w, configs.get(v), config_given=v in configs)
                        for v, w in weights.items())  # fmt: skip
        dep = await self.deployments.update(actor, deployment_id, None, None, traffic)
        deadline = self._clock() + timeout_s
        while True:
            dep = await self.deployments.store.get_deployment(deployment_id)
            applied = dep.observed_generation >= dep.generation
            if applied and dep.status != DeploymentStatus.DEPLOYING:
                break
            if self._clock() > deadline:
                raise InferdError(f"deployment {deployment_id} not ready after {timeout_s:g} s")
            await self._sleep(0.05)
        if dep.status == DeploymentStatus.FAILED:
            raise Unprocessable(f"deployment {deployment_id} failed: {dep.reason}")
        return dep

    async def _drop(self, actor: Actor, deployment_id: str, keep: int) -> None:
        """Serve `keep` alone again (the other revision unloads)."""
        try:
            dep = await self.deployments.store.get_deployment(deployment_id)
            if dep.traffic:
                await self.deployments.update(actor, deployment_id, keep, None, None)
        except InferdError as e:
            log.warning("deployment %s: serving version %s alone failed: %s", deployment_id,
                        keep, e.message)  # fmt: skip
            raise

    async def _expire(self, actor: Actor, deployment_id: str, ro: Rollout) -> None:
        """Once the previous version's warm time is over, drop it."""
        await self._sleep(ro.keep_previous_s)
        if ro.phase != "switched":
            return
        try:
            await self.deployments.update(actor, deployment_id, ro.version, None, None)
        except InferdError as e:
            log.warning("rollout of %s: dropping version %s failed: %s", deployment_id,
                        ro.previous, e.message)  # fmt: skip
            return
        ro.phase = "done"
        ro.event("previous_unloaded", version=ro.previous)

    async def stop(self) -> None:
        for ro in self.latest.values():
            for task in (ro._expiry, ro._task):
                if task is not None:
                    task.cancel()
