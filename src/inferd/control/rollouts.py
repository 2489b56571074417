"""Rollouts of a deployment to another version: blue-green, with instant rollback.

Blue-green (`Rollouts.blue_green`): the new version is brought up as a revision that takes no
traffic (every replica loaded, as any revision is before it is served), optionally its sample
test must pass on it, then 100 % of the traffic moves to it in one weight change (nothing
reloads, no request fails). The previous version stays loaded at weight 0 for
`keep_previous_s`: `rollback` moves the traffic back at once, with no load. When the time is up
the previous revision is dropped. Each step is an event on the rollout (shown on the deployment)
and an audit entry.

The rollout's state is this node's (in memory): after a restart the previous revision simply
stays at weight 0 until the deployment is changed again.
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
from inferd.core.errors import Conflict, InferdError, InvalidField, Unprocessable
from inferd.core.records import Deployment, DeploymentStatus
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
    phase: str = "loading"  # loading → testing → switched → done | rolled_back | failed
    events: list[dict[str, Any]] = field(default_factory=list)
    _expiry: asyncio.Task[None] | None = None

    def event(self, what: str, **detail: Any) -> None:
        self.events.append({"at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "event": what, **detail})  # fmt: skip

    def doc(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "from": self.previous, "to": self.version,
                "phase": self.phase, "keep_previous_s": self.keep_previous_s,
                "events": list(self.events)}  # fmt: skip


class Rollouts:
    """Blue-green rollouts and rollbacks of deployments (use-cases over `Deployments`)."""

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
        dep, model = await self.deployments.get(actor, deployment_id)
        if dep.traffic:
            raise Conflict("the deployment splits its traffic among revisions; a blue-green "
                           "rollout starts from one served version")  # fmt: skip
        if version == dep.version:
            raise InvalidField("version", f"version {version} is the one served already")
        old = self.latest.get(dep.id)
        if old is not None and old.phase in ("loading", "testing"):
            raise Conflict(f"a rollout to version {old.version} is in progress")
        if old is not None and old._expiry is not None:
            old._expiry.cancel()
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
            await self._drop(actor, deployment_id, keep=ro.previous)
            raise
        ro.phase = "switched"
        ro.event("switched", version=version, previous_warm_for_s=keep_previous_s)
        await self.audit.record(actor, "deployment.rollout", "deployment", dep.id,
                                model=model.name, strategy="blue_green",
                                previous=ro.previous, version=version)  # fmt: skip
        ro._expiry = asyncio.create_task(self._expire(actor, dep.id, ro))
        return dep, ro

    async def rollback(self, actor: Actor, deployment_id: str) -> tuple[Deployment, Rollout]:
        """Move all traffic back to the previous version while it is still warm."""
        dep, model = await self.deployments.get(actor, deployment_id)
        ro = self.latest.get(dep.id)
        if ro is None or ro.phase != "switched":
            raise Conflict("no switched rollout to roll back (deploy the version you want)")
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
        self, actor: Actor, deployment_id: str, weights: dict[int, int], timeout_s: float
    ) -> Deployment:
        """Apply a split and wait until this node serves it (failed: raised)."""
        traffic = tuple(Revision(v, w) for v, w in weights.items())
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
        with contextlib.suppress(InferdError):
            dep = await self.deployments.store.get_deployment(deployment_id)
            if dep.traffic:
                await self.deployments.update(actor, deployment_id, keep, None, None)

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
            if ro._expiry is not None:
                ro._expiry.cancel()
