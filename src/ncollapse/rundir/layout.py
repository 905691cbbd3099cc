"""The names and the identity of a run directory: which files it holds, what makes a folder one
of ours, and when two configs describe the same run.

Layout (described for users in ``docs/architecture.md``)::

    RUN/config.toml            the resolved config (or the user's settings) and versions
    RUN/status.json            state ("running", "finished", "failed"), epoch, TPT onset, message
    RUN/epochs.jsonl           one row per epoch: lr, train_loss, train_error, time
    RUN/metrics.jsonl          one row per measurement: losses, errors, NC metrics of each split
    RUN/metrics.csv            the same rows flattened ("train.nc1" columns)
    RUN/snapshots/epoch_XXXXX.npz   features of a fixed subset, class means, classifier
    RUN/checkpoints/last.pt    model, optimiser, RNG state (written by ``train``)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ncollapse.config import TrainConfig

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "EPOCHS",
    "HOW_TO_RUN_KEYS",
    "LOCK",
    "METRICS",
    "METRICS_CSV",
    "RUN_FILES",
    "SNAPSHOTS",
    "STATUS",
    "config_differences",
    "is_run_dir",
    "snapshot_name",
]

CONFIG = "config.toml"
STATUS = "status.json"
EPOCHS = "epochs.jsonl"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SNAPSHOTS = "snapshots"
CHECKPOINT = str(Path("checkpoints") / "last.pt")
LOCK = ".lock"

#: Every file a run directory may hold at its top level (snapshots/ and checkpoints/ are folders).
RUN_FILES = (CONFIG, STATUS, METRICS, METRICS_CSV, EPOCHS)
#: The files that mark a folder as a run directory written by ncollapse.
_MARKERS = (STATUS, CONFIG)

SNAPSHOT_RE = re.compile(r"^epoch_(\d+)\.npz$")

#: Config keys that say how to run, not what to compute: they may differ between the run
#: directory's config and the one it is resumed or reused with.
HOW_TO_RUN_KEYS = ("device", "deterministic")


def snapshot_name(epoch: int) -> str:
    """``epoch_00042.npz``: the file name of the snapshot of ``epoch``."""
    return f"epoch_{int(epoch):05d}.npz"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a run written by ncollapse (its status.json or
    config.toml is there)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in _MARKERS)


def config_differences(saved: TrainConfig | Mapping[str, Any],
                       wanted: TrainConfig | Mapping[str, Any]) -> list[str]:
    """The keys on which two configs differ in what they compute (``HOW_TO_RUN_KEYS`` ignored),
    sorted; empty when they describe the same run."""
    a = saved.to_dict() if isinstance(saved, TrainConfig) else dict(saved)
    b = wanted.to_dict() if isinstance(wanted, TrainConfig) else dict(wanted)
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in HOW_TO_RUN_KEYS and a.get(k) != b.get(k))
