"""How many replicas a version should have: a pure decision over load samples and a clock.

Like Ray Serve's and Knative's autoscalers: desired = ceil(load / target_concurrency), where load
is requests in flight (queued or running). Scaling up follows the average over a short window, at
once; scaling down waits until the load has been low for `downscale_delay_s` (the highest need
seen over that window wins), so a burst does not make replicas flap. With `min_replicas: 0` the
last replica goes after `scale_to_zero_after_s` without a request; a request arriving at zero
replicas starts one (a cold start) and waits for it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from inferd.core.scaling import AutoscalingPolicy


@dataclass
class LoadHistory:
    """(time, requests in flight) samples, kept for the longest window a decision needs."""

    keep_s: float
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, inflight: int) -> None:
        self.samples.append((now, inflight))
        while self.samples and self.samples[0][0] < now - self.keep_s:
            self.samples.popleft()

    def since(self, t: float) -> list[int]:
        return [n for at, n in self.samples if at >= t]


def needed(load: float, policy: AutoscalingPolicy) -> int:
    return math.ceil(load / policy.target_concurrency - 1e-9) if load > 0 else 0


def desired_replicas(
    policy: AutoscalingPolicy,
    current: int,
    history: LoadHistory,
    now: float,
    last_request_at: float,
) -> int:
    """The replica count to move to now (bounded by the policy)."""
    recent = history.since(now - policy.upscale_window_s) or [0]
    up = needed(sum(recent) / len(recent), policy)
    inflight_now = history.samples[-1][1] if history.samples else 0
    if inflight_now > 0:
        up = max(up, 1)  # a request waiting at zero replicas: cold start
    floor = policy.min_replicas
    idle_for = now - last_request_at
    if floor == 0 and (policy.scale_to_zero_after_s is None
                       or idle_for < policy.scale_to_zero_after_s):  # fmt: skip
        floor = 1  # recently used: keep one warm
    if up > current:
        return max(floor, min(up, policy.max_replicas))
    # down: only as far as the highest need over the whole downscale window
    window = history.since(now - policy.downscale_delay_s)
    covers = bool(history.samples) and history.samples[0][0] <= now - policy.downscale_delay_s
    if not covers:
        return max(floor, min(current, policy.max_replicas))
    down = max((needed(n, policy) for n in window), default=0)
    return max(floor, min(max(down, 0), current, policy.max_replicas))
