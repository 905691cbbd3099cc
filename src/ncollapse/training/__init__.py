"""Training into the terminal phase: the loop (:mod:`.loop`), measuring (:mod:`.evaluation`),
checkpoints and resume (:mod:`.checkpoints`), when things happen (:mod:`.schedule`) and the
learning-rate sweep (:mod:`.sweep`). Runs are written by :class:`ncollapse.rundir.RunWriter`.
"""

from ncollapse.rundir import run_summary
from ncollapse.training.evaluation import TrainingDiverged
from ncollapse.training.loop import train
from ncollapse.training.schedule import lr_at, measurement_epochs
from ncollapse.training.sweep import lr_sweep

__all__ = [
    "TrainingDiverged",
    "lr_at",
    "lr_sweep",
    "measurement_epochs",
    "run_summary",
    "train",
]
