"""The learning-rate sweep of [Pap20]: one short run per learning rate, the best one picked."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ncollapse.config import LR_SELECT, TrainConfig, paper_lr_grid
from ncollapse.io import atomic_write_json
from ncollapse.rundir import load_run
from ncollapse.training.evaluation import TrainingDiverged
from ncollapse.training.loop import train

__all__ = ["lr_sweep"]


def lr_sweep(config: TrainConfig, *, out: str | Path, grid: Iterable[float] | None = None,
             select: str = "train_loss", progress: bool = True) -> dict[str, Any]:
    """Train ``config`` once per learning rate of ``grid`` (default: the paper's 25 values) into
    ``out/lr_<k>`` and pick the best by final training loss (lowest) or test accuracy
    (highest). Diverged runs are recorded and never picked. Writes ``out/sweep.json``.

    Each sweep run measures only at its last epoch and keeps no snapshots.
    """
    if select not in LR_SELECT:
        raise ValueError(f"unknown select {select!r}; valid choices: {', '.join(LR_SELECT)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("run the lr sweep in a single process (not under torchrun); each of "
                         "its runs can then be repeated under torchrun")
    if select == "test_accuracy" and not config.measure_test:
        raise ValueError("select='test_accuracy' needs measure_test = true")
    lrs = paper_lr_grid() if grid is None else [float(v) for v in grid]
    if not lrs:
        raise ValueError("the learning-rate grid is empty")
    out = Path(out)
    results = []
    for k, lr in enumerate(lrs):
        cfg = config.replace(lr=lr, num_measurements=1, snapshot_per_class=0)
        run_dir = out / f"lr_{k:02d}"
        entry: dict[str, Any] = {"lr": lr, "run_dir": str(run_dir)}
        try:
            train(cfg, out=run_dir, progress=progress)
            last = load_run(run_dir).metrics[-1]
            entry.update(diverged=False, train_loss=last["train_loss"],
                         train_error=last["train_error"], test_accuracy=last["test_accuracy"])
        except TrainingDiverged as exc:
            entry.update(diverged=True, message=str(exc), train_loss=None, train_error=None,
                         test_accuracy=None)
        results.append(entry)
    ok = [r for r in results if not r["diverged"] and r[select] is not None
          and math.isfinite(r[select])]
    best = None
    if ok:
        best = (min(ok, key=lambda r: r["train_loss"]) if select == "train_loss"
                else max(ok, key=lambda r: r["test_accuracy"]))
    summary = {"select": select, "results": results, "best": best}
    atomic_write_json(out / "sweep.json", summary)
    return summary
