"""When things happen in a run: the learning rate of each epoch and the measurement epochs."""

from __future__ import annotations

import math

import numpy as np

from ncollapse.config import TrainConfig

__all__ = ["lr_at", "measurement_epochs"]


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: step ÷10 after 1/3 and 2/3 of the epochs, cosine
    from ``lr`` towards 0, or constant."""
    base, total = config.lr, config.epochs
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        drops = sum(epoch > total * f for f in (1 / 3, 2 / 3))
        return base * 0.1**drops
    if config.schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / total))
    raise ValueError(f"unknown schedule {config.schedule!r}; valid choices: step, cosine, constant")


def measurement_epochs(epochs: int, num: int) -> list[int]:
    """About ``num`` log-spaced epochs in [1, ``epochs``], distinct, always including the last."""
    if num <= 0:
        return []
    target = min(num, epochs)
    if target == 1:
        return [epochs]
    m = target
    while True:
        pts = np.unique(np.rint(np.geomspace(1, epochs, m)).astype(np.int64))
        if len(pts) >= target or m > 50 * target:
            break
        m += 1
    out = sorted(int(p) for p in pts)
    if out[-1] != epochs:  # geomspace ends exactly at ``epochs``; kept as a guarantee
        out.append(epochs)
    return out
