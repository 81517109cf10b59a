"""Learning-rate schedules as pure functions of the step."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, base_lr: float,
                  warmup_lr: float, min_lr: float = 0.0) -> float:
    """Constant `warmup_lr` for `warmup_steps` (CoOp's warm-up), then cosine from `base_lr`
    down to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return warmup_lr
    return _cosine(step, total_steps, warmup_steps, base_lr, min_lr)


def linear_warmup_cosine(step: int, *, total_steps: int, warmup_steps: int,
                         base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up to `base_lr` over `warmup_steps` (CLIP pretraining's), then cosine down
    to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return _cosine(step, total_steps, warmup_steps, base_lr, min_lr)


def _cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float,
            min_lr: float) -> float:
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
