"""The control plane as one object: database, artifact store, identity, catalog, deployments."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from inferd.auth.limits import ConcurrencyLimiter, RateLimiter
from inferd.control.audit import Audit
from inferd.control.catalog import Catalog, SampleCodec
from inferd.control.deployments import Deployments
from inferd.control.gate import Gate
from inferd.control.identity import Identity
from inferd.registry.artifacts import ArtifactStore, open_store
from inferd.registry.db import Database, sqlite_url
from inferd.registry.store import RegistryStore
from inferd.serving.engine import InferenceEngine
from inferd.settings import Settings

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

    async def stop(self) -> None:
        await self.deployments.stop()
        await self.catalog.stop()
        await self.rate.close()
        await self.concurrency.close()
        await self.db.close()


def build_control_plane(
    settings: Settings, engine: InferenceEngine, codec: SampleCodec
) -> ControlPlane:
    data_dir = Path(settings.data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    reg = settings.registry
    db = Database(reg.database_url or sqlite_url(data_dir / "inferd.db"))
    store = RegistryStore(db)
    secret = reg.s3_secret_key.get_secret_value() if reg.s3_secret_key else None
    access = reg.s3_access_key.get_secret_value() if reg.s3_access_key else None
    artifacts = open_store(
        reg.artifact_store or str(data_dir / "artifacts"),
        endpoint_url=reg.s3_endpoint_url,
        region=reg.s3_region,
        access_key=access,
        secret_key=secret,
    )
    lim = settings.limits
    prefix = settings.redis_prefix
    rate = RateLimiter(settings.redis_url, prefix, fail_open=lim.redis_fail_open)
    concurrency = ConcurrencyLimiter(settings.redis_url, prefix, fail_open=lim.redis_fail_open)
    audit = Audit(store)
    identity = Identity(store, audit, settings.auth, lim, rate)
    catalog = Catalog(store, artifacts, audit, engine, codec, reg, lim, data_dir,
                      settings.auth.anonymous_inference)  # fmt: skip
    deployments = Deployments(store, catalog, audit, engine, reg.reconcile_interval_s)
    gate = Gate(identity, catalog, rate, concurrency, settings.auth, lim)
    return ControlPlane(db, store, artifacts, audit, identity, catalog, deployments, gate, rate,
                        concurrency)  # fmt: skip
