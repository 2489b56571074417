"""The data plane's door: who is calling, may they use this model, and are they within limits.

Kept cheap for the inference path: an anonymous call is one dict lookup; credentials are cached by
`Identity`; the model access map is in memory (`Catalog.by_name`, refreshed by the reconciler).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from inferd.auth.limits import ConcurrencyLimiter, RateLimiter
from inferd.auth.policy import can_see, require_admin
from inferd.auth.principal import Principal
from inferd.control.catalog import Catalog
from inferd.control.identity import Identity
from inferd.core.errors import ModelNotFound, PermissionDenied, Unauthenticated
from inferd.core.records import Scope, Visibility
from inferd.settings import AuthSettings, LimitSettings


class Gate:
    """Authentication, model-level authorization and admission (rate and concurrency limits)."""

    def __init__(
        self,
        identity: Identity,
        catalog: Catalog,
        rate: RateLimiter,
        concurrency: ConcurrencyLimiter,
        auth: AuthSettings,
        limits: LimitSettings,
    ) -> None:
        self.identity = identity
        self.catalog = catalog
        self.rate = rate
        self.concurrency = concurrency
        self.anonymous = auth.anonymous_inference
        self.public_metrics = auth.public_metrics
        self.limits = limits

    async def principal(self, authorization: str | None, api_key: str | None) -> Principal:
        return await self.identity.authenticate(authorization, api_key)

    def model(self, p: Principal, name: str, infer: bool) -> None:
        """Allow or raise. Someone else's private model is `ModelNotFound`, exactly as a model
        that does not exist, so callers learn nothing about it."""
        model = self.catalog.by_name.get(name)
        if model is None or model.system:  # repository models are public
            public = True
        else:
            public = model.visibility == Visibility.PUBLIC
            if not can_see(p, model, True):
                raise ModelNotFound(name)
        if p.anonymous:
            if not self.anonymous:
                if public:
                    raise Unauthenticated("authentication required")
                raise ModelNotFound(name)
            return
        if infer and not p.has(Scope.INFER):
            raise PermissionDenied("this needs the 'infer' scope")

    def visible(self, p: Principal, names: Iterable[str]) -> list[str]:
        """The names a listing may show this caller."""
        if p.anonymous and not self.anonymous:
            raise Unauthenticated("authentication required")
        out = []
        for n in names:
            model = self.catalog.by_name.get(n)
            if model is None or model.system or can_see(p, model, self.anonymous):
                out.append(n)
        return out

    def admin(self, p: Principal) -> None:
        require_admin(p)

    def metrics(self, p: Principal) -> None:
        if not self.public_metrics:
            require_admin(p)

    @contextlib.asynccontextmanager
    async def admit(self, p: Principal) -> AsyncIterator[None]:
        """Per key/user requests-per-minute and concurrent requests (429 + Retry-After)."""
        if p.anonymous:
            yield
            return
        rpm = p.rpm_limit or self.limits.requests_per_minute
        if rpm:
            await self.rate.hit(f"rpm:{p.key_id or p.user_id}", rpm)
        conc = p.concurrency_limit or self.limits.concurrent_requests
        if not conc:
            yield
            return
        async with self.concurrency.acquire(f"user:{p.user_id}", conc):
            yield
