"""The run directory: the one owner of its format (names, schemas), its writer and its reader.

``RunWriter`` writes one (``train()`` uses it, and so can any training loop); ``load_run`` reads
one for plots, animations, reports and the theory lab; ``run_summary`` gives its headline numbers.
"""

from ncollapse.rundir.layout import (
    CHECKPOINT,
    CONFIG,
    EPOCHS,
    HOW_TO_RUN_KEYS,
    METRICS,
    METRICS_CSV,
    RUN_FILES,
    SNAPSHOTS,
    STATUS,
    config_differences,
    foreign_entries,
    is_run_dir,
    snapshot_name,
)
from ncollapse.rundir.lock import RunLock, RunLocked
from ncollapse.rundir.reader import (
    Run,
    load_run,
    load_runs,
    load_snapshot,
    read_jsonl,
    read_status,
    run_summary,
)
from ncollapse.rundir.writer import RunExists, RunWriter, metrics_csv, snapshot_arrays

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "EPOCHS",
    "HOW_TO_RUN_KEYS",
    "METRICS",
    "METRICS_CSV",
    "RUN_FILES",
    "SNAPSHOTS",
    "STATUS",
    "Run",
    "RunExists",
    "RunLock",
    "RunLocked",
    "RunWriter",
    "config_differences",
    "foreign_entries",
    "is_run_dir",
    "load_run",
    "load_runs",
    "load_snapshot",
    "metrics_csv",
    "read_jsonl",
    "read_status",
    "run_summary",
    "snapshot_arrays",
    "snapshot_name",
]
