"""Neural-collapse tracking for PyTorch Lightning: the ``NeuralCollapse`` callback.

Needs ``pip install 'ncollapse[lightning]'``. Usage::

    from lightning.pytorch import Trainer
    from ncollapse.integrations.lightning import NeuralCollapse

    trainer = Trainer(max_epochs=100, callbacks=[NeuralCollapse(run_dir="runs/mine")])
    trainer.fit(module, train_loader, val_loader)   # logs nc/train/nc1, nc/val/nc1, ...

At the end of each chosen training epoch the callback runs the module in eval mode (its modes
restored afterwards) over the training data and, optionally, the validation data, through
forward hooks (``layer``/``classifier``/``use`` as in :func:`ncollapse.measure_model`), and
logs every metric through the trainer's loggers. Under DDP every rank measures its own exact
shard of the data set and the statistics are synced across ranks; only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ncollapse.integrations._common import Measured, MeasureOptions, Schedule, require
from ncollapse.integrations._tracker import Tracked, Tracker
from ncollapse.integrations.tensorboard import add_overview
from ncollapse.metrics import NCMetrics

_pl = None
try:  # the unified package first, then the standalone one
    _pl = require("lightning.pytorch", "lightning", "ncollapse.integrations.lightning")
except ImportError as _exc:
    try:
        import pytorch_lightning as _pl  # type: ignore[no-redef]
    except ImportError:
        raise _exc from None

__all__ = ["NeuralCollapse"]


class NeuralCollapse(Tracked, _pl.Callback):
    """Measure neural collapse at the end of chosen training epochs and log it.

    Args:
        epochs: 1-based epoch numbers, a predicate ``epoch -> bool``, or None for about
            ``num_measurements`` log-spaced epochs over ``max_epochs`` (always the last).
        num_measurements: the number of log-spaced measurements by default.
        val: also measure the validation data (the trainer's first validation loader or
            ``val_dataloader``), logged as ``nc/val/<name>``.
        layer, classifier, use, input_key, label_key, max_batches, full_covariance: where the
            features come from, as in :func:`ncollapse.measure_model` (default: the input of
            the ``nn.Linear`` that produces the model's output).
        layers, pool: more layers to measure as well (names, glob patterns such as
            ``"body.*"``, or modules; each output pooled by ``pool``), logged as
            ``nc/train/layers/<name>/<metric>``.
        train_dataloader, val_dataloader: loaders to measure on instead of the trainer's (e.g.
            the training set without augmentation).
        run_dir: write a run directory there (rank 0) that ``ncollapse plot``, ``animate`` and
            ``report`` read; ``config`` is recorded in it. ``snapshot_size`` training samples
            are kept per measurement for the animation.
        loss_key: the logged metric that holds the epoch's training loss, recorded in the run
            directory when present.
        exact_shards: measure through a loader of its own over the same (map-style) data set,
            in order, each sample exactly once (under DDP each rank its strided shard, where the
            trainer's sampler pads), leaving the training's random stream untouched; False:
            the loaders exactly as given.

    After each measurement ``self.last`` holds the ``NCMetrics`` per split, ``self.history``
    every ``(epoch, {split: NCMetrics})`` so far and ``self.layer_history`` every
    ``(epoch, {split: {layer: NCMetrics}})``.
    """

    def __init__(self, *, epochs: Iterable[int] | Callable[[int], bool] | None = None,
                 num_measurements: int = 50, val: bool = True,
                 layer: nn.Module | str | None = None, classifier: nn.Module | str | None = None,
                 use: str | None = None, layers: Sequence[nn.Module | str] | None = None,
                 pool: str | Callable[[torch.Tensor], torch.Tensor] = "flatten",
                 input_key: str | None = None, label_key: str | None = None,
                 max_batches: int | None = None, full_covariance: bool = False,
                 train_dataloader: Iterable[Any] | None = None,
                 val_dataloader: Iterable[Any] | None = None,
                 run_dir: str | Path | None = None, config: Mapping[str, Any] | None = None,
                 snapshot_size: int = 300, loss_key: str | None = "train_loss",
                 exact_shards: bool = True) -> None:
        super().__init__()
        options = MeasureOptions(layer=layer, classifier=classifier, use=use, layers=layers,
                                 pool=pool, max_batches=max_batches, input_key=input_key,
                                 label_key=label_key, full_covariance=full_covariance)
        self.tracker = Tracker(options, Schedule(epochs, num_measurements), run_dir=run_dir,
                               config=config, snapshot_size=snapshot_size,
                               exact_shards=exact_shards)
        self.val = val
        self.train_dataloader = train_dataloader
        self.val_dataloader = val_dataloader
        self.loss_key = loss_key
        self.last: dict[str, NCMetrics] = {}

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self.tracker.start(total)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        lr = _learning_rate(trainer)
        loss = self._train_loss(trainer)
        measured: Measured | None = None
        if self.tracker.schedule(epoch):
            loaders = self._loaders(trainer)
            precision = trainer.strategy.precision_plugin  # e.g. "64-true" casts the inputs
            measured = self.tracker.measure(pl_module, loaders, epoch, lr=lr, train_loss=loss,
                                            step=trainer.global_step,
                                            batch_transform=precision.convert_input)
            self.last = measured.splits
            pl_module.log_dict(self.tracker.scalars(measured), on_step=False, on_epoch=True,
                               sync_dist=False)
        self.tracker.log_epoch(epoch, lr=lr, train_loss=loss, step=trainer.global_step,
                               measured=None if measured is None else measured.splits)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.tracker.finish()
        run_dir = self.tracker.run_dir
        if run_dir is None or not trainer.is_global_zero or not self.history:
            return
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if type(logger).__name__ == "TensorBoardLogger" and experiment is not None:
                add_overview(experiment, run_dir, step=self.history[-1][0])

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.tracker.finish(exception)

    # ------------------------------------------------------------------ helpers

    def _loaders(self, trainer: Any) -> dict[str, Iterable[Any]]:
        train = self.train_dataloader or trainer.train_dataloader
        if train is None:
            raise RuntimeError("NeuralCollapse: the trainer has no training dataloader to "
                               "measure; pass train_dataloader=...")
        loaders: dict[str, Iterable[Any]] = {"train": train}
        if self.val:
            val = self.val_dataloader
            if val is None:
                val = trainer.val_dataloaders
                if isinstance(val, (list, tuple)):
                    val = val[0] if val else None
            if val is not None:
                loaders["val"] = val
        return loaders

    def _train_loss(self, trainer: Any) -> float | None:
        if self.loss_key is None:
            return None
        value = trainer.callback_metrics.get(self.loss_key)
        return None if value is None else float(value)


def _learning_rate(trainer: Any) -> float | None:
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            return float(group["lr"])
    return None
