"""Authorization decisions: pure functions of a principal and a model, no I/O.

Someone else's private model is reported exactly like a model that does not exist (`NotFound`,
same message), so probing names tells an outsider nothing.
"""

from __future__ import annotations

from inferd.core.errors import NotFound, PermissionDenied, Unauthenticated
from inferd.core.records import Model, Scope, Visibility

from .principal import Principal


def _not_found(model: Model) -> NotFound:
    return NotFound(f"model '{model.name}' not found")


def require(p: Principal, scope: Scope) -> None:
    """Raise unless `p` is signed in and holds `scope` (or a scope that includes it)."""
    if p.anonymous:
        raise Unauthenticated("authentication required")
    if not p.has(scope):
        raise PermissionDenied(f"this needs the '{scope.value}' scope")


def require_admin(p: Principal) -> None:
    """Raise unless `p` is an administrator acting with the admin scope."""
    if p.anonymous:
        raise Unauthenticated("authentication required")
    if not p.is_admin:
        raise PermissionDenied("this needs an administrator")


def _owns(p: Principal, model: Model) -> bool:
    return not p.anonymous and p.user_id == model.owner_id


def can_see(p: Principal, model: Model, allow_anonymous: bool) -> bool:
    """Whether `p` may know that `model` exists (list it, read it)."""
    if p.is_admin:
        return True
    if model.visibility == Visibility.PUBLIC:
        return allow_anonymous or not p.anonymous
    return _owns(p, model)


def can_infer(p: Principal, model: Model, allow_anonymous: bool) -> bool:
    """Whether `p` may call `model`. Anonymous callers get in only where `can_see` lets them."""
    return can_see(p, model, allow_anonymous) and (p.anonymous or p.has(Scope.INFER))


def can_manage(p: Principal, model: Model) -> bool:
    """Whether `p` may change or delete `model`; system models belong to admins only."""
    if not p.has(Scope.MANAGE):
        return False
    return p.is_admin or (_owns(p, model) and not model.system)


def visible(p: Principal, model: Model, allow_anonymous: bool) -> Model:
    """`model` when `p` may see it; otherwise the same `NotFound` a missing model gets."""
    if not can_see(p, model, allow_anonymous):
        raise _not_found(model)
    return model


def inferable(p: Principal, model: Model, allow_anonymous: bool) -> Model:
    """`model` when `p` may call it: `NotFound` if unseen, `PermissionDenied` if seen only."""
    visible(p, model, allow_anonymous)
    if not can_infer(p, model, allow_anonymous):
        raise PermissionDenied(f"this needs the '{Scope.INFER.value}' scope")
    return model


def manageable(p: Principal, model: Model) -> Model:
    """`model` when `p` may change it.

    Anonymous → `Unauthenticated` (checked first, so it cannot probe names); unseen → `NotFound`;
    seen but not `p`'s to change (another user's public model, a system model) → `PermissionDenied`.
    """
    if p.anonymous:
        raise Unauthenticated("authentication required")
    visible(p, model, allow_anonymous=False)
    if not p.has(Scope.MANAGE):
        raise PermissionDenied(f"this needs the '{Scope.MANAGE.value}' scope")
    if not can_manage(p, model):
        raise PermissionDenied(f"you may not change model '{model.name}'")
    return model
