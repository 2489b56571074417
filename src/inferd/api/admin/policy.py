"""Route policies for the management API: every route declares exactly one.

A policy is a FastAPI dependency that authenticates the caller, applies the policy, applies the
caller's rate and concurrency limits, and hands the route an `Actor` (principal + address).
`tests/integration/test_access.py` fails when a route has none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request

from inferd.auth.policy import require, require_admin
from inferd.auth.principal import ANONYMOUS
from inferd.control.audit import Actor
from inferd.control.plane import ControlPlane
from inferd.core.errors import InvalidInput, Unauthenticated
from inferd.core.records import Scope


def control(request: Request) -> ControlPlane:
    cp: ControlPlane = request.app.state.control
    return cp


class Policy:
    """`public`: anyone (login, register); `optional`: anyone, the use-case decides what the
    caller sees (anonymous only where the operator allows it); `authenticated`: any valid
    credential with the `infer` scope; `manage`: the `manage` scope; `admin`: an admin."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, request: Request) -> AsyncIterator[Actor]:
        cp = control(request)
        headers = request.headers
        try:
            p = await cp.identity.authenticate(
                headers.get("authorization"), headers.get("x-api-key")
            )
        except Unauthenticated:
            if self.name != "public":
                raise
            # login and refresh must work while a client still sends its expired token
            p = ANONYMOUS
        if self.name == "authenticated":
            require(p, Scope.INFER)
        elif self.name == "manage":
            require(p, Scope.MANAGE)
        elif self.name == "admin":
            require_admin(p)
        _check_parameters(request)
        client = request.client.host if request.client else ""
        actor = Actor(p, client, {"route": f"{request.method} {request.url.path}"[:300]})
        async with cp.gate.admit(p):
            yield actor

    def __repr__(self) -> str:
        return f"Policy({self.name})"


def _check_parameters(request: Request) -> None:
    """Path and query values may not hold NUL: PostgreSQL cannot compare text with it, so a
    lookup would fail as a server error instead of answering "not found"."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if isinstance(value, str) and "\x00" in value:
            raise InvalidInput(f"{name}: must not contain NUL characters")


PUBLIC = Policy("public")
OPTIONAL = Policy("optional")
AUTHENTICATED = Policy("authenticated")
MANAGE = Policy("manage")
ADMIN = Policy("admin")
POLICIES = (PUBLIC, OPTIONAL, AUTHENTICATED, MANAGE, ADMIN)
