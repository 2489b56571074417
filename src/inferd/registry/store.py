"""The registry's repository: users, API keys, models, versions, deployments, audit, secrets.

Every method is one transaction and returns `inferd.core.records` types, never ORM rows.
Connection failures become `Unavailable("database unavailable")` (details are logged, never put
in the message: they hold SQL, hosts and paths).
"""

from __future__ import annotations

from inferd.registry.audit_store import AuditStore
from inferd.registry.batch_store import BatchStore
from inferd.registry.deployment_store import DeploymentStore
from inferd.registry.job_store import JobStore
from inferd.registry.model_store import ModelStore
from inferd.registry.user_store import UserStore
from inferd.registry.webhook_store import WebhookStore


class RegistryStore(
    UserStore, ModelStore, DeploymentStore, AuditStore, JobStore, WebhookStore, BatchStore
):
    """The registry's persistence. One instance per process, shared by every use-case; each
    aggregate lives in its own module (`user_store`, `model_store`, `deployment_store`,
    `audit_store`, `job_store`, `webhook_store`, `batch_store`) on the shared `Repository` base.

    `clock` returns the current UTC time (injected so tests can pin timestamps).
    """
