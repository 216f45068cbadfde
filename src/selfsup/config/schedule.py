"""The learning-rate schedule a config describes: linear warm-up then cosine decay (Loshchilov & Hutter 2017),
per step. The recipe sums it to size a short run; the loop applies it."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: (step+1)/warmup during warm-up, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_sum(total_steps: int, warmup_steps: float, min_ratio: float) -> float:
    """``sum(warmup_cosine(s, total_steps, warmup_steps, min_ratio) for s in range(total_steps))`` without the loop.

    Warm-up: steps 0 .. n-1 with s < warmup_steps, each (s + 1) / warmup_steps. Decay: the remaining steps
    a .. T-1, each min_ratio + (1 - min_ratio) (1 + cos(pi (s - W) / (T - W))) / 2, whose cosines form an
    arithmetic progression with the sum sin(n d / 2) / sin(d / 2) cos(theta_0 + (n - 1) d / 2).
    """
    if total_steps <= 0:
        return 0.0
    ramp = min(math.ceil(warmup_steps), total_steps) if warmup_steps > 0 else 0
    total = ramp * (ramp + 1) / (2 * warmup_steps) if ramp else 0.0
    decaying = total_steps - ramp
    if decaying <= 0:
        return total
    span = max(total_steps - warmup_steps, 1)  # the progress (s - W) / span stays below 1 for s < T
    theta0, delta = math.pi * (ramp - warmup_steps) / span, math.pi / span
    cosines = math.sin(decaying * delta / 2) / math.sin(delta / 2) * math.cos(theta0 + (decaying - 1) * delta / 2)
    return total + decaying * (min_ratio + (1.0 - min_ratio) / 2) + (1.0 - min_ratio) / 2 * cosines
