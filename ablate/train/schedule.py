"""Learning rate across stages: warmup, then cosine / linear / constant decay to ``min_lr``.

Stage policies (``training.schedule.stage_policy``):

* ``continue``: one schedule over all stages, as if they were one run;
* ``rewarm``: every stage warms up again and decays over its own steps (stage-wise training
  as in continued pretraining);
* ``constant_then_decay``: warm up, hold the peak until the last stage, decay within it
  (warmup-stable-decay): earlier stages all see the same LR, so their comparison is cleaner.
"""

from __future__ import annotations

import math

from ablate.recipe.schema import OptimizerConfig, ScheduleConfig


def _decay(kind: str, progress: float, peak: float, floor: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return peak - (peak - floor) * progress
    return peak


def _warm_then_decay(
    step: int, steps: int, warmup: int, kind: str, peak: float, floor: float
) -> float:
    warmup = min(warmup, max(steps - 1, 0))
    if step < warmup:
        return peak * (step + 1) / warmup
    return _decay(kind, (step - warmup) / max(1, steps - warmup), peak, floor)


def lr_at(
    step: int, stage_steps: list[int], schedule: ScheduleConfig, opt: OptimizerConfig
) -> float:
    """The learning rate of global step ``step`` (0-based)."""
    total = sum(stage_steps)
    if schedule.stage_policy == "continue":
        return _warm_then_decay(
            step, total, schedule.warmup_steps, schedule.decay, opt.lr, opt.min_lr
        )
    start = 0
    for i, n in enumerate(stage_steps):
        if step < start + n or i == len(stage_steps) - 1:
            break
        start += n
    if schedule.stage_policy == "rewarm":
        return _warm_then_decay(
            step - start, n, schedule.warmup_steps, schedule.decay, opt.lr, opt.min_lr
        )
    # constant_then_decay
    if step < schedule.warmup_steps:
        return opt.lr * (step + 1) / schedule.warmup_steps
    if i < len(stage_steps) - 1:
        return opt.lr
    return _decay(schedule.decay, (step - start) / max(1, n), opt.lr, opt.min_lr)
