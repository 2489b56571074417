"""The control plane as one object: database, artifact store, identity, catalog, deployments,
async predictions and their webhooks."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from inferd.auth.limits import ConcurrencyLimiter, RateLimiter
from inferd.control.abtest import ABTests
from inferd.control.audit import Audit
from inferd.control.batches import Batches
from inferd.control.catalog import Catalog
from inferd.control.deployments import Deployments
from inferd.control.gate import Gate
from inferd.control.identity import Identity
from inferd.control.jobs import Jobs
from inferd.control.pipelines import Pipelines
from inferd.control.rollouts import Rollouts
from inferd.control.webhooks import Webhooks
from inferd.registry.artifacts import ArtifactStore
from inferd.registry.db import Database
from inferd.registry.store import RegistryStore

log = logging.getLogger("inferd.control")


@dataclass
class ControlPlane:
    """Everything off the request path; `start()` migrates the database and reconciles."""

    db: Database
    store: RegistryStore
    artifacts: ArtifactStore
    audit: Audit
    identity: Identity
    catalog: Catalog
    deployments: Deployments
    gate: Gate
    rate: RateLimiter
    concurrency: ConcurrencyLimiter
    rollouts: Rollouts
    abtests: ABTests
    pipelines: Pipelines
    jobs: Jobs
    webhooks: Webhooks
    batches: Batches

    async def start(self) -> None:
        await self.db.migrate()
        key = await self.identity.start()
        if key is not None:
            # Printed once, on the console of whoever started the server; never logged to files.
            print(
                f"inferd: created the admin user '{self.identity.settings.bootstrap_admin}'. "
                f"Its API key, shown only now:\n\n    {key}\n",
                file=sys.stderr,
                flush=True,
            )
        await self.deployments.start()
        await self.jobs.start()  # after the first reconcile: deployed models are served
        await self.webhooks.start()  # deliveries left pending by the last run are sent
        await self.batches.start()  # jobs left by a stopped or dead server go on

    async def stop(self) -> None:
        await self.batches.stop()  # lets its jobs go: the database is open
        await self.jobs.stop()
        await self.webhooks.stop()  # hands back what it was sending: the database is open
        await self.rollouts.stop()
        await self.deployments.stop()
        await self.catalog.stop()
        await self.rate.close()
        await self.concurrency.close()
        await self.db.close()
