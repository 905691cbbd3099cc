"""Neural-collapse metrics in TensorBoard: a scalar per metric and split, and at the end the
overview figure of a run directory as an image.

Needs ``pip install 'ncollapse[tensorboard]'``. Usage in a plain loop::

    from ncollapse.integrations.tensorboard import TensorBoardLogger

    with TensorBoardLogger("tb/mine") as tb:
        for epoch in range(1, epochs + 1):
            ...
            tb.log_measurement(epoch, train=measure(...), test=measure(...))
        tb.log_overview("runs/mine")   # a run directory (ncollapse train, RunWriter)

``TensorBoardLogger(dir).log_run(run_dir)`` puts a whole run directory (``ncollapse train``'s,
or one written by ``RunWriter`` or the callbacks) into TensorBoard; ``ncollapse train
--tensorboard DIR`` does that for the run it trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ncollapse.integrations._common import metric_scalars, require
from ncollapse.metrics import NCMetrics
from ncollapse.plots import overview_figure
from ncollapse.rundir import load_run

__all__ = ["TensorBoardLogger", "add_overview"]

_OVERVIEW_TAG = "nc/overview"
_ROW_SCALARS = ("train_loss", "train_error", "test_loss", "test_accuracy")
_EPOCH_SCALARS = ("train_loss", "train_error", "lr")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary_writer_class() -> Any:
    require("tensorboard", "tensorboard", "ncollapse.integrations.tensorboard")
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    return SummaryWriter


class TensorBoardLogger:
    """Writes ``nc/<split>/<metric>`` scalars (and the overview image) to ``log_dir``.

    Only rank 0 of a torch.distributed job should create one (the metrics are the same on
    every rank after the accumulator's sync).
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = _summary_writer_class()(log_dir=str(self.log_dir))

    def log_measurement(self, epoch: int, **splits: NCMetrics | Mapping[str, Any] | None
                        ) -> dict[str, float]:
        """One scalar per metric with a value, per split (``train=..., test=...``), at step
        ``epoch``; returns what was written."""
        written: dict[str, float] = {}
        for split, metrics in splits.items():
            if metrics is not None:
                written.update(metric_scalars(metrics, f"nc/{split}/"))
        for tag, value in written.items():
            self.writer.add_scalar(tag, value, global_step=int(epoch))
        self.writer.flush()
        return written

    def log_scalars(self, epoch: int, values: Mapping[str, float | None]) -> None:
        """Other per-epoch numbers (losses, accuracy, learning rate) under their own names."""
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), global_step=int(epoch))

    def log_run(self, run_dir: str | Path) -> int:
        """Everything a run directory holds: per measurement the ``nc/train/*`` and
        ``nc/test/*`` scalars, per epoch ``train_loss``, ``train_error`` and ``lr`` (as
        ``epoch/<name>``), then the overview figure. Returns the number of measurements."""
        run = load_run(run_dir)
        for row in run.metrics:
            self.log_row(int(row["epoch"]), row)
        self.log_epochs_and_overview(run_dir)
        return len(run.metrics)

    def log_row(self, epoch: int, row: Mapping[str, Any]) -> None:
        """One measurement row (as in ``metrics.jsonl``, or as ``train(on_measurement=...)``
        passes it): its ``nc/train/*`` and ``nc/test/*`` scalars and its losses/accuracy as
        ``measurement/<name>``. ``ncollapse train --tensorboard`` calls it live."""
        self.log_measurement(epoch, train=row.get("train"), test=row.get("test"))
        self.log_scalars(epoch, {f"measurement/{k}": row.get(k)
                                 for k in _ROW_SCALARS if _is_number(row.get(k))})

    def log_epochs_and_overview(self, run_dir: str | Path) -> None:
        """The per-epoch ``train_loss``, ``train_error`` and ``lr`` of a run directory (as
        ``epoch/<name>``), then its overview figure at the last measured epoch."""
        run = load_run(run_dir)
        for row in run.epochs:
            self.log_scalars(int(row["epoch"]), {f"epoch/{k}": row.get(k)
                                                 for k in _EPOCH_SCALARS
                                                 if _is_number(row.get(k))})
        if run.metrics:
            self.log_overview(run_dir, step=int(run.metrics[-1]["epoch"]))
        self.writer.flush()

    def log_overview(self, run_dir: str | Path, step: int | None = None) -> None:
        """The run directory's overview figure (``ncollapse plot``'s) as an image."""
        add_overview(self.writer, run_dir, step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_overview(writer: Any, run_dir: str | Path, *, step: int | None = None,
                 tag: str = _OVERVIEW_TAG) -> None:
    """Add the overview figure of ``run_dir`` to a ``SummaryWriter`` (or any writer with
    ``add_figure``), at ``step`` (default: the run's last epoch)."""
    run = load_run(run_dir)
    fig = overview_figure([run])
    if step is None:
        step = run.last_epoch or 0
    writer.add_figure(tag, fig, global_step=int(step), close=True)
