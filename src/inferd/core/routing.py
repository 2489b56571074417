"""A deployment's routing policy: header rules, fallbacks and a circuit breaker per revision.

Pure values and one pure state machine. The control plane parses and checks a policy
(`parse_routing`), the data plane applies it per request: a header rule picks a revision before
the traffic split does; when the revision that took a request fails (an error of the server's,
not the caller's) or its circuit is open, the fallbacks are tried in order; each revision's
`CircuitBreaker` counts its outcomes and opens after too many failures, refusing at once (so
the fallback answers without waiting for a sick replica) until a cool-down passes and a probe
succeeds. Time is passed in (`now`, seconds on a monotonic clock): no clock is read here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from inferd.core.errors import (
    DeadlineExceeded,
    InferdError,
    InvalidField,
    ModelExecutionError,
    ModelNotReady,
    Overloaded,
    ReplicaFailed,
    Unavailable,
)
from inferd.core.tensors import Tensor

if TYPE_CHECKING:
    from inferd.core.canary import Window

#: Failures of the server's side: they count against a revision's circuit and send the request
#: to the fallbacks. A caller's mistake (bad input, not allowed) is answered as it is.
FAILURES: tuple[type[InferdError], ...] = (
    ModelExecutionError, ReplicaFailed, DeadlineExceeded, Overloaded, ModelNotReady, Unavailable,
)  # fmt: skip

#: Breaker states, as exported in the `inferd_circuit_breaker_state` gauge.
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


class CircuitOpen(Unavailable):
    """A revision's circuit is open: refused at once (HTTP 503, gRPC UNAVAILABLE)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Requests whose header `header` (lower case) equals `value` go to revision `version`."""

    header: str
    value: str
    version: int


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where a failed request goes next: another model (routed by its own split, or a named
    version of it), or another revision of this model (`model` None)."""

    model: str | None = None
    version: int | None = None

    def doc(self) -> dict[str, Any]:
        return {
            k: v for k, v in (("model", self.model), ("version", self.version)) if v is not None
        }


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a revision's circuit opens: after `failures` failures in a row, or once at least
    `min_requests` requests in the last `window_s` seconds failed at `error_ratio` or more
    (when `error_ratio` is set). It stays open `open_s` seconds, then lets `probes` requests
    through (half open): one success closes it, one failure opens it again."""

    failures: int = 5
    error_ratio: float | None = None
    window_s: float = 30.0
    min_requests: int = 20
    open_s: float = 10.0
    probes: int = 1


@dataclass(frozen=True, slots=True)
class Shadow:
    """Mirror `percent` % of the requests this deployment answers to another revision (`version`)
    or model (`model`); at most `max_in_flight` copies run at once, the rest are dropped and
    counted. A shadow's answers are compared with the primary's, never returned."""

    model: str | None = None
    version: int | None = None
    percent: float = 100.0
    max_in_flight: int = 16

    def doc(self) -> dict[str, Any]:
        out = Fallback(self.model, self.version).doc()
        return out | {"percent": self.percent, "max_in_flight": self.max_in_flight}


@dataclass(frozen=True, slots=True)
class ABTest:
    """The deployment's revisions are the arms of an A/B test: each answered request's id is
    remembered with its arm (the last `remember` of them) so that feedback can be attached to
    it; with `sticky`, the value of that request header (a user id, an API key, the
    Authorization header), hashed, picks the arm instead of a random draw, so one key always
    lands on one arm."""

    sticky: str | None = None
    remember: int = 100_000

    def doc(self) -> dict[str, Any]:
        return {"sticky": self.sticky, "remember": self.remember}


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """A deployment's rules, fallbacks, circuit breaker (None: no breaker), shadow and A/B
    test."""

    rules: tuple[Rule, ...] = ()
    fallbacks: tuple[Fallback, ...] = ()
    breaker: BreakerPolicy | None = None
    shadow: Shadow | None = None
    ab: ABTest | None = None

    def __bool__(self) -> bool:
        return bool(self.rules or self.fallbacks or self.breaker or self.shadow or self.ab)

    def route(self, header: Any) -> str | None:
        """The revision a rule sends this request to (`header(name)` reads a request header by
        its lower-case name), or None."""
        for rule in self.rules:
            if header(rule.header) == rule.value:
                return str(rule.version)
        return None

    def doc(self) -> dict[str, Any]:
        """The policy as the API shows it (and as `parse_routing` reads it back)."""
        out: dict[str, Any] = {}
        if self.rules:
            out["rules"] = [{"header": r.header, "value": r.value, "version": r.version}
                            for r in self.rules]  # fmt: skip
        if self.fallbacks:
            out["fallbacks"] = [f.doc() for f in self.fallbacks]
        if self.breaker is not None:
            b = self.breaker
            out["circuit_breaker"] = {"failures": b.failures, "error_ratio": b.error_ratio,
                                      "window_s": b.window_s, "min_requests": b.min_requests,
                                      "open_s": b.open_s, "probes": b.probes}  # fmt: skip
        if self.shadow is not None:
            out["shadow"] = self.shadow.doc()
        if self.ab is not None:
            out["ab"] = self.ab.doc()
        return out


NO_ROUTING = RoutingPolicy()


class CircuitBreaker:
    """One revision's circuit: closed → open → half open → closed (see `BreakerPolicy`)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = CLOSED
        self._run = 0  # failures in a row
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed) in the window
        self._failed = 0  # failures among _outcomes
        self._opened_at = 0.0
        self._probing = 0  # probes let through and not yet answered

    def allow(self, now: float) -> bool:
        """May a request go to this revision now? (A True in the half-open state is a probe:
        its outcome must be recorded.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now - self._opened_at < self.policy.open_s:
                return False
            self.state, self._probing = HALF_OPEN, 0
        if self._probing >= self.policy.probes:
            return False
        self._probing += 1
        return True

    def retry_after(self, now: float) -> float:
        """Seconds until the circuit lets a probe through."""
        return max(self.policy.open_s - (now - self._opened_at), 0.0)

    def release(self) -> None:
        """A request `allow` let through ended with no verdict on the revision (the caller's
        mistake, or the caller went away): a probe's place is given back, nothing else."""
        if self.state == HALF_OPEN:
            self._probing = max(self._probing - 1, 0)

    def record(self, failed: bool, now: float) -> None:
        """The outcome of a request `allow` let through."""
        if self.state == HALF_OPEN:
            self._probing = max(self._probing - 1, 0)
            if failed:
                self._open(now)
            else:
                self._close()
            return
        if self.state == OPEN:
            return  # an answer from before it opened
        self._run = self._run + 1 if failed else 0
        p = self.policy
        if p.error_ratio is not None:
            self._outcomes.append((now, failed))
            self._failed += failed
            while self._outcomes and now - self._outcomes[0][0] > p.window_s:
                self._failed -= self._outcomes.popleft()[1]
        too_many = (p.error_ratio is not None and len(self._outcomes) >= p.min_requests
                    and self._failed >= p.error_ratio * len(self._outcomes))  # fmt: skip
        if self._run >= p.failures or too_many:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self._opened_at, self._probing = OPEN, now, 0

    def _close(self) -> None:
        self.state, self._run, self._failed, self._probing = CLOSED, 0, 0, 0
        self._outcomes.clear()


@dataclass
class ShadowStats:
    """How a deployment's shadow compares with what was answered: copies sent, answered alike
    (every output equal, floats within 1e-6), answered differently, failed, dropped (too many in
    flight), and the largest and mean absolute difference of the numeric outputs."""

    target: str = ""
    sent: int = 0
    agreed: int = 0
    differed: int = 0
    failed: int = 0
    dropped: int = 0
    in_flight: int = 0
    max_abs_diff: float = 0.0
    _diff_sum: float = 0.0
    _diff_n: int = 0

    def record(self, agreed: bool, diff: float | None) -> None:
        if agreed:
            self.agreed += 1
        else:
            self.differed += 1
        if diff is not None:
            self.max_abs_diff = max(self.max_abs_diff, diff)
            self._diff_sum += diff
            self._diff_n += 1

    def doc(self) -> dict[str, Any]:
        compared = self.agreed + self.differed
        mean = self._diff_sum / self._diff_n if self._diff_n else None
        return {"target": self.target, "sent": self.sent, "agreed": self.agreed,
                "differed": self.differed, "failed": self.failed, "dropped": self.dropped,
                "in_flight": self.in_flight,
                "agreement": round(self.agreed / compared, 6) if compared else None,
                "max_abs_diff": self.max_abs_diff, "mean_abs_diff": mean}  # fmt: skip


def compare(primary: Sequence[Tensor], shadow: Sequence[Tensor]) -> tuple[bool, float | None]:
    """Do two answers agree (the same outputs, shapes and values; floats within 1e-6), and the
    largest absolute difference among their numeric outputs (None: nothing numeric to compare)."""
    theirs = {t.name: t.data for t in shadow}
    agreed, diff = len(theirs) == len(primary), None
    for t in primary:
        other = theirs.get(t.name)
        if other is None or other.shape != t.data.shape:
            agreed = False
            continue
        a, b = t.data, other
        if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
            d = (
                float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                if a.size
                else 0.0
            )
            diff = d if diff is None else max(diff, d)
            agreed = agreed and d <= 1e-6
        else:
            agreed = agreed and bool(np.array_equal(a, b))
    return agreed, diff


@dataclass
class Routes:
    """The routing policies the data plane applies, by served model name (set by the control
    plane's reconciler), each revision's circuit breaker, and each model's shadow statistics."""

    policies: dict[str, RoutingPolicy] = field(default_factory=dict)
    breakers: dict[tuple[str, str], CircuitBreaker] = field(default_factory=dict)
    shadows: dict[str, ShadowStats] = field(default_factory=dict)
    #: Worker pids lowered to background priority because their revision only shadows.
    backgrounded: set[int] = field(default_factory=set)
    #: Each A/B test's remembered answers and feedback, by model.
    abtests: dict[str, ABState] = field(default_factory=dict)
    #: Models under a canary analysis: each watched revision's recent outcomes, by model and
    #: version (set by the rollout, recorded by the data plane).
    watched: dict[str, dict[str, Window]] = field(default_factory=dict)

    def abtest(self, name: str) -> ABState | None:
        """The A/B state of `name` when its policy runs a test (made on first use)."""
        policy = self.policies.get(name)
        if policy is None or policy.ab is None:
            return None
        state = self.abtests.get(name)
        if state is None:
            state = self.abtests[name] = ABState(policy.ab.remember)
        return state

    def set(self, name: str, policy: RoutingPolicy) -> None:
        if self.policies.get(name) == policy:
            return
        self.forget(name)
        if policy:
            self.policies[name] = policy

    def forget(self, name: str) -> None:
        self.policies.pop(name, None)
        self.shadows.pop(name, None)
        self.abtests.pop(name, None)
        for key in [k for k in self.breakers if k[0] == name]:
            del self.breakers[key]

    def breaker(self, name: str, version: str) -> CircuitBreaker | None:
        """The circuit breaker of revision `version` of `name` (None: the model has none)."""
        policy = self.policies.get(name)
        if policy is None or policy.breaker is None:
            return None
        b = self.breakers.get((name, version))
        if b is None:
            b = self.breakers[(name, version)] = CircuitBreaker(policy.breaker)
        return b


# ---- parsing -------------------------------------------------------------------------------

ROUTING_FIELDS = {"rules", "fallbacks", "circuit_breaker", "shadow", "ab"}
BREAKER_FIELDS = {"failures", "error_ratio", "window_s", "min_requests", "open_s", "probes"}


def parse_routing(raw: Any, field: str = "routing") -> RoutingPolicy:
    """A routing policy from JSON, refusing anything out of range with `InvalidField` naming the
    field. Which versions and models the policy names exist is the control plane's check."""
    if raw is None:
        return NO_ROUTING
    if not isinstance(raw, Mapping):
        raise InvalidField(field, f"must be an object with {', '.join(sorted(ROUTING_FIELDS))}")
    unknown = set(raw) - ROUTING_FIELDS
    if unknown:
        raise InvalidField(f"{field}.{sorted(unknown)[0]}", "unknown field")
    return RoutingPolicy(
        _rules(raw.get("rules"), f"{field}.rules"),
        _fallbacks(raw.get("fallbacks"), f"{field}.fallbacks"),
        _breaker(raw.get("circuit_breaker"), f"{field}.circuit_breaker"),
        _shadow(raw.get("shadow"), f"{field}.shadow"),
        _ab(raw.get("ab"), f"{field}.ab"),
    )


def _items(raw: Any, where: str, most: int) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidField(where, "must be a list")
    if len(raw) > most:
        raise InvalidField(where, f"at most {most} entries")
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidField(f"{where}[{i}]", "must be an object")
    return raw


def _version(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidField(where, "must be a version number (an integer >= 1)")
    return v


def _rules(raw: Any, where: str) -> tuple[Rule, ...]:
    out = []
    for i, item in enumerate(_items(raw, where, 32)):
        at = f"{where}[{i}]"
        unknown = set(item) - {"header", "value", "version"}
        if unknown:
            raise InvalidField(f"{at}.{sorted(unknown)[0]}", "unknown field")
        header, value = item.get("header"), item.get("value")
        if not isinstance(header, str) or not header.strip() or len(header) > 128:
            raise InvalidField(f"{at}.header", "must be a header name")
        if not isinstance(value, str) or len(value) > 1024:
            raise InvalidField(f"{at}.value", "must be a string (the header's exact value)")
        out.append(
            Rule(header.strip().lower(), value, _version(item.get("version"), f"{at}.version"))
        )
    return tuple(out)


def _fallbacks(raw: Any, where: str) -> tuple[Fallback, ...]:
    out: list[Fallback] = []
    for i, item in enumerate(_items(raw, where, 8)):
        at = f"{where}[{i}]"
        unknown = set(item) - {"model", "version"}
        if unknown:
            raise InvalidField(f"{at}.{sorted(unknown)[0]}", "unknown field")
        fb = _target(item, at)
        if fb in out:
            raise InvalidField(at, "is listed twice")
        out.append(fb)
    return tuple(out)


def _target(item: Mapping[str, Any], at: str) -> Fallback:
    """A model and/or a version of it (a fallback's or a shadow's target)."""
    model = item.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidField(f"{at}.model", "must be a model name")
    version = item.get("version")
    if version is not None:
        version = _version(version, f"{at}.version")
    if model is None and version is None:
        raise InvalidField(at, "name a model, a version, or both")
    return Fallback(model, version)


def _breaker(raw: Any, where: str) -> BreakerPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidField(where, "must be an object")
    unknown = set(raw) - BREAKER_FIELDS
    if unknown:
        raise InvalidField(f"{where}.{sorted(unknown)[0]}", "unknown field")
    d = BreakerPolicy()
    failures = number_field(raw, "failures", d.failures, where, 1, 1000, whole=True)
    min_requests = number_field(raw, "min_requests", d.min_requests, where, 1, 100_000, whole=True)
    probes = number_field(raw, "probes", d.probes, where, 1, 100, whole=True)
    ratio = raw.get("error_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float)
                              or not 0 < ratio <= 1):  # fmt: skip
        raise InvalidField(f"{where}.error_ratio", "must be a number above 0 and at most 1")
    return BreakerPolicy(
        int(failures),
        None if ratio is None else float(ratio),
        number_field(raw, "window_s", d.window_s, where, 0.001, 86_400),
        int(min_requests),
        number_field(raw, "open_s", d.open_s, where, 0.001, 86_400),
        int(probes),
    )


def _shadow(raw: Any, where: str) -> Shadow | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidField(where, "must be an object with a model and/or version, and percent")
    unknown = set(raw) - {"model", "version", "percent", "max_in_flight"}
    if unknown:
        raise InvalidField(f"{where}.{sorted(unknown)[0]}", "unknown field")
    target = _target(raw, where)
    return Shadow(
        target.model,
        target.version,
        number_field(raw, "percent", 100.0, where, 0.0, 100.0),
        int(number_field(raw, "max_in_flight", 16, where, 1, 1024, whole=True)),
    )


def _ab(raw: Any, where: str) -> ABTest | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidField(where, "must be an object (sticky, remember)")
    unknown = set(raw) - {"sticky", "remember"}
    if unknown:
        raise InvalidField(f"{where}.{sorted(unknown)[0]}", "unknown field")
    sticky = raw.get("sticky")
    if sticky is not None and (not isinstance(sticky, str) or not sticky.strip()
                               or len(sticky) > 128):  # fmt: skip
        raise InvalidField(f"{where}.sticky", "must be a header name")
    remember = int(number_field(raw, "remember", 100_000, where, 1, 10_000_000, whole=True))
    return ABTest(sticky.strip().lower() if sticky else None, remember)


def sticky_draw(key: str) -> float:
    """A draw in [0, 1) that is the same for the same key (and spread evenly over keys)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class Arm:
    """The feedback attached to one arm's answers: every reward (up to `MAX_REWARDS`)."""

    served: int = 0
    rewards: list[float] = field(default_factory=list)


#: Rewards kept per arm (the report's tests read them all).
MAX_REWARDS = 1_000_000


@dataclass
class ABState:
    """One A/B test on this node: which arm answered each remembered request id, the rewards."""

    remember: int
    served: OrderedDict[str, str] = field(default_factory=OrderedDict)
    arms: dict[str, Arm] = field(default_factory=dict)

    def answered(self, request_id: str, version: str) -> None:
        self.arms.setdefault(version, Arm()).served += 1
        self.served[request_id] = version
        self.served.move_to_end(request_id)
        while len(self.served) > self.remember:
            self.served.popitem(last=False)

    def feedback(self, request_id: str, reward: float) -> str | None:
        """Attach `reward` to the arm that answered `request_id` (None: not remembered). A
        request's feedback counts once."""
        version = self.served.pop(request_id, None)
        if version is not None:
            arm = self.arms.setdefault(version, Arm())
            if len(arm.rewards) < MAX_REWARDS:
                arm.rewards.append(reward)
        return version


def number_field(raw: Mapping[str, Any], key: str, default: float, where: str, low: float,
                 high: float, whole: bool = False) -> float:  # fmt: skip
    """`raw[key]` (or `default`), a number (an integer with `whole`) from `low` to `high`;
    else `InvalidField` naming `where.key`."""
    v = raw.get(key, default)
    ok = not isinstance(v, bool) and isinstance(v, int if whole else int | float)
    if not ok or not low <= v <= high:
        kind = "an integer" if whole else "a number"
        raise InvalidField(f"{where}.{key}", f"must be {kind} from {low:g} to {high:g}")
    return float(v)
