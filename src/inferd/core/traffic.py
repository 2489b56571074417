"""Traffic splits: how requests that name no version are shared among a model's revisions.

Pure values: the control plane parses and checks a split (`parse_traffic`), the serving layer
holds it on the served model (`Split`), and the data plane picks a revision per request
(`Split.pick`, one uniform draw and a bisection).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inferd.core.errors import InvalidField
from inferd.core.spec import version_key

if TYPE_CHECKING:
    from inferd.core.records import DeploymentConfig

#: Weights are whole percentages.
TOTAL = 100


@dataclass(frozen=True, slots=True)
class Revision:
    """One revision of a deployment: a model version, its share of the traffic (%), and the
    runtime config it runs with (None: the deployment's). `config_given` marks a revision
    parsed from a request that said what its config is (`"config": {...}` or `null`); one
    that did not keeps the config the revision has (see `Deployments.update`)."""

    version: int
    weight: int
    config: DeploymentConfig | None = None
    config_given: bool = False


@dataclass(frozen=True, slots=True)
class Split:
    """Revisions (served version names) with cumulative shares in (0, 1]; weight-0 revisions
    are served (reachable by their version) but take no share."""

    versions: tuple[str, ...]
    bounds: tuple[float, ...]
    #: The revision with the largest share (the lowest version on a tie, as `primary`): what a
    #: caller that does not route (metadata without a version) sees as the model's version.
    primary: str

    @classmethod
    def of(cls, weights: Mapping[str, int]) -> Split:
        """A split from {version: weight}; weights need not sum to 100 (they are shares)."""
        taking = [(v, w) for v, w in weights.items() if w > 0]
        if not taking:
            raise ValueError("a traffic split needs a revision with a weight above 0")
        total = sum(w for _, w in taking)
        bounds, running = [], 0
        for _, w in taking:
            running += w
            bounds.append(running / total)
        bounds[-1] = 1.0
        top = max(w for _, w in taking)
        first = min((v for v, w in taking if w == top), key=version_key)
        return cls(tuple(v for v, _ in taking), tuple(bounds), first)

    def pick(self, u: float) -> str:
        """The revision for a uniform draw `u` in [0, 1)."""
        return self.versions[bisect.bisect_right(self.bounds, u)]

    def weights(self) -> dict[str, float]:
        """Each taking revision's share in percent (for display)."""
        out, low = {}, 0.0
        for v, high in zip(self.versions, self.bounds, strict=True):
            out[v] = round((high - low) * TOTAL, 6)
            low = high
        return out


def parse_traffic(
    raw: Any,
    field: str = "traffic",
    config: Callable[[Any, str], DeploymentConfig] | None = None,
) -> tuple[Revision, ...]:
    """A deployment's revisions from JSON: `[{"version": 1, "weight": 90}, ...]` or the short
    form `{"1": 90, "2": 10}`. Weights are integers from 0 to 100 that sum to 100; versions are
    distinct positive integers. With `config` (a parser naming its field), an entry may carry
    its own runtime `config` (`null`: the deployment's). Raises `InvalidField` naming the bad
    field."""
    if isinstance(raw, Mapping):
        items: list[Any] = [{"version": k, "weight": v} for k, v in raw.items()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise InvalidField(field, "must be a list of {version, weight} or {version: weight}")
    if not items:
        raise InvalidField(field, "needs at least one revision")
    if len(items) > 16:
        raise InvalidField(field, "at most 16 revisions")
    out: list[Revision] = []
    seen: set[int] = set()
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidField(where, "must be an object with 'version' and 'weight'")
        unknown = set(item) - ({"version", "weight", "config"} if config else {"version", "weight"})
        if unknown:
            raise InvalidField(f"{where}.{sorted(unknown)[0]}", "unknown field")
        version = _whole(item.get("version"))
        if version is None or version < 1:
            raise InvalidField(f"{where}.version", "must be a version number (an integer >= 1)")
        if version in seen:
            raise InvalidField(f"{where}.version", f"version {version} is listed twice")
        seen.add(version)
        weight = _whole(item.get("weight"))
        if weight is None or not 0 <= weight <= TOTAL:
            raise InvalidField(f"{where}.weight", "must be an integer from 0 to 100")
        if config is not None and "config" in item:
            raw_config = item["config"]
            own = None if raw_config is None else config(raw_config, f"{where}.config")
            out.append(Revision(version, weight, own, config_given=True))
        else:
            out.append(Revision(version, weight))
    total = sum(r.weight for r in out)
    if total != TOTAL:
        raise InvalidField(field, f"weights must sum to 100 (they sum to {total})")
    return tuple(out)


def primary(revisions: tuple[Revision, ...]) -> int:
    """The revision that takes the most traffic (the lowest version on a tie): the deployment's
    `version`, the one its sample test runs on."""
    return min(revisions, key=lambda r: (-r.weight, r.version)).version


def _whole(v: Any) -> int | None:
    """An integer, or a string of digits (JSON object keys are strings)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit() and len(v) < 10:
        return int(v)
    return None
