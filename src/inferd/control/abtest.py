"""A/B tests: feedback on answered requests, and reports (per-arm counts and outcomes, and each
arm against the control arm with a significance test from scipy / statsmodels, never
hand-written statistics).

The arms are a deployment's revisions; the data plane assigns requests to them (sticky by a
header when the policy says so, `core.routing.ABTest`) and remembers which arm answered each
request id (`core.routing.ABState`, this node's memory).

Rewards that are all 0 or 1 are rates: a two-proportion z-test (statsmodels
`proportions_ztest`, pooled variance) with a Wald confidence interval of the difference
(`confint_proportions_2indep`). Anything else is a mean: Welch's t-test (scipy `ttest_ind`,
`equal_var=False`) with its confidence interval of the difference of means.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from inferd.control.audit import Actor
from inferd.control.deployments import Deployments
from inferd.core.errors import Conflict, InvalidField, NotFound, Unsupported
from inferd.core.routing import ABState, Arm
from inferd.core.traffic import primary

#: Confidence level of the intervals.
CONFIDENCE = 0.95


def build_report(state: ABState, weights: dict[str, float], control: str) -> dict[str, Any]:
    """The report of one A/B test: every arm (the split's revisions, `weights` in percent), and
    every other arm compared with `control` (the revision with the largest share)."""
    arms = []
    for version in sorted(set(weights) | set(state.arms), key=int):
        arm = state.arms.get(version, Arm())
        arms.append({"version": int(version), "weight": weights.get(version, 0.0),
                     "served": arm.served, **_summary(arm.rewards)})  # fmt: skip
    base = state.arms.get(control, Arm())
    comparisons = [
        {"control": int(control), "treatment": int(version), **compare(base.rewards, arm.rewards)}
        for version, arm in sorted(state.arms.items(), key=lambda kv: int(kv[0]))
        if version != control
    ]
    return {"control": int(control), "confidence": CONFIDENCE, "arms": arms,
            "comparisons": comparisons}  # fmt: skip


def _summary(rewards: list[float]) -> dict[str, Any]:
    n = len(rewards)
    if n == 0:
        return {"feedback": 0, "mean": None, "std": None, "rate": None}
    mean = statistics.fmean(rewards)
    std = statistics.stdev(rewards) if n > 1 else None
    rate = mean if _binary(rewards) else None
    return {"feedback": n, "mean": mean, "std": std, "rate": rate}


def _binary(rewards: list[float]) -> bool:
    return all(r in (0.0, 1.0) for r in rewards)


def compare(control: list[float], treatment: list[float]) -> dict[str, Any]:
    """Treatment against control: the test used, its statistic and p-value, the difference
    (treatment - control) and its confidence interval; `None`s while either side has fewer
    than two rewards."""
    empty = {"test": None, "statistic": None, "p_value": None, "difference": None,
             "ci": None}  # fmt: skip
    if len(control) < 2 or len(treatment) < 2:
        return empty
    try:
        from scipy import stats
        from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
    except ImportError:
        raise Unsupported(
            "A/B reports need scipy and statsmodels: pip install 'inferd[abtest]'"
        ) from None
    if _binary(control) and _binary(treatment):
        s_t, n_t, s_c, n_c = sum(treatment), len(treatment), sum(control), len(control)
        if s_t + s_c in (0, n_t + n_c):  # every outcome the same: nothing to test
            return empty | {"test": "two_proportion_z", "difference": s_t / n_t - s_c / n_c}
        z, p = proportions_ztest([s_t, s_c], [n_t, n_c])
        low, high = confint_proportions_2indep(s_t, n_t, s_c, n_c, method="wald",
                                               compare="diff", alpha=1 - CONFIDENCE)  # fmt: skip
        return {"test": "two_proportion_z", "statistic": float(z), "p_value": float(p),
                "difference": s_t / n_t - s_c / n_c, "ci": [float(low), float(high)]}  # fmt: skip
    result = stats.ttest_ind(treatment, control, equal_var=False)
    ci = result.confidence_interval(confidence_level=CONFIDENCE)
    diff = statistics.fmean(treatment) - statistics.fmean(control)
    p = float(result.pvalue)
    return {"test": "welch_t", "statistic": float(result.statistic),
            "p_value": None if math.isnan(p) else p, "difference": diff,
            "ci": [float(ci.low), float(ci.high)]}  # fmt: skip


class ABTests:
    """The A/B use-cases over a deployment's routing state."""

    def __init__(self, deployments: Deployments) -> None:
        self.deployments = deployments

    async def feedback(self, actor: Actor, deployment_id: str, request_id: str,
                       reward: float) -> dict[str, Any]:  # fmt: skip
        """Attach an outcome (`reward`: a number; 0/1 for a rate) to a request this deployment
        answered (its id), for the A/B report. Each request's feedback counts once."""
        _, model = await self.deployments.get(actor, deployment_id)
        state = self.deployments.routes.abtest(model.name)
        if state is None:
            raise Conflict("this deployment runs no A/B test (routing.ab)")
        if (
            isinstance(reward, bool)
            or not isinstance(reward, int | float)
            or not math.isfinite(reward)
        ):
            raise InvalidField("reward", "must be a finite number")
        version = state.feedback(request_id, float(reward))
        if version is None:
            raise NotFound(f"request '{request_id}' is not one this deployment answered here "
                           f"lately (or its feedback was given already)")  # fmt: skip
        return {"request_id": request_id, "version": int(version), "reward": float(reward)}

    async def report(self, actor: Actor, deployment_id: str) -> dict[str, Any]:
        """The A/B report: each arm's requests and feedback, each arm against the control."""
        dep, model = await self.deployments.get(actor, deployment_id)
        state = self.deployments.routes.abtest(model.name)
        if state is None:
            raise Conflict("this deployment runs no A/B test (routing.ab)")
        weights = {str(r.version): float(r.weight) for r in dep.revisions()}
        control = str(primary(dep.revisions()))
        return build_report(state, weights, control)
