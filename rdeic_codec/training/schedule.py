"""Learning-rate schedule shared by the stages: short linear warm-up, then cosine decay to 10%."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int = 50, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer, lr: float) -> None:
    """Set every parameter group's learning rate: ``lr`` times the group's ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
