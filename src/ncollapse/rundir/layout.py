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

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ncollapse.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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
    "foreign_entries",
    "is_run_dir",
    "snapshot_name",
]

CONFIG = "config.toml"
STATUS = "status.json"
EPOCHS = "epochs.jsonl"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SNAPSHOTS = "snapshots"
CHECKPOINTS = "checkpoints"
CHECKPOINT = str(Path(CHECKPOINTS) / "last.pt")
LOCK = ".lock"

#: Every file a run directory may hold at its top level (snapshots/ and checkpoints/ are folders).
RUN_FILES = (CONFIG, STATUS, METRICS, METRICS_CSV, EPOCHS)

SNAPSHOT_RE = re.compile(r"^epoch_(\d+)\.npz$")
# What the writer leaves in each place: its files and, after a crash, its temporary files.
_OURS = {
    ".": re.compile(r"^(config\.toml|status\.json|metrics\.jsonl|metrics\.csv|epochs\.jsonl|"
                    r"\.lock|snapshots|checkpoints)$|^\.(config\.toml|status\.json|metrics\.jsonl|"
                    r"metrics\.csv|epochs\.jsonl)\..*\.tmp$"),
    SNAPSHOTS: re.compile(r"^epoch_\d+\.npz$|^\.epoch_\d+\.npz\..*\.tmp$"),
    CHECKPOINTS: re.compile(r"^last\.pt$|^\.last\.pt\..*\.tmp$"),
}

#: Config keys that say how to run, not what to compute: they may differ between the run
#: directory's config and the one it is resumed or reused with.
HOW_TO_RUN_KEYS = ("device", "deterministic")


def snapshot_name(epoch: int) -> str:
    """``epoch_00042.npz``: the file name of the snapshot of ``epoch``."""
    return f"epoch_{int(epoch):05d}.npz"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a run written by ncollapse: a status.json of
    ours (a JSON object with "state" and "updated") or a config.toml that records the
    ncollapse version it was written by. Any other config.toml does not make a run."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        status = json.loads((path / STATUS).read_text(encoding="utf-8"))
        if isinstance(status, dict) and {"state", "updated"} <= set(status):
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(path / CONFIG, "rb") as fh:
            versions = tomllib.load(fh).get("versions")
        return isinstance(versions, dict) and "ncollapse" in versions
    except (OSError, ValueError):
        return False


def foreign_entries(path: str | Path) -> list[str]:
    """Entries of the run directory ``path`` that its writer did not make (relative paths,
    sorted): anything besides the run files, snapshots and checkpoints. Symbolic links count
    as foreign, so nothing is ever followed out of the directory."""
    path = Path(path)
    found: list[str] = []
    for where, pattern in _OURS.items():
        folder = path if where == "." else path / where
        if where != "." and (not folder.exists() or folder.is_symlink()):
            continue
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            name = entry.name if where == "." else f"{where}/{entry.name}"
            expect_dir = where == "." and entry.name in (SNAPSHOTS, CHECKPOINTS)
            if (not pattern.match(entry.name) or entry.is_symlink()
                    or entry.is_dir() != expect_dir):
                found.append(name)
    return sorted(found)


def config_differences(saved: TrainConfig | Mapping[str, Any],
                       wanted: TrainConfig | Mapping[str, Any]) -> list[str]:
    """The keys on which two configs differ in what they compute (``HOW_TO_RUN_KEYS`` ignored;
    a model default left unset equals the same value set explicitly), sorted; empty when they
    describe the same run."""
    a = saved.resolved().to_dict() if isinstance(saved, TrainConfig) else dict(saved)
    b = wanted.resolved().to_dict() if isinstance(wanted, TrainConfig) else dict(wanted)
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in HOW_TO_RUN_KEYS and a.get(k) != b.get(k))
