"""One framework-free tracker behind the Lightning and Hugging Face callbacks: when to measure,
what to measure (eval mode, exact DDP shards), the clean scalars for loggers, and the run
directory (rank 0 only) that ``ncollapse plot/animate/report`` read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ncollapse.collect import collect_features
from ncollapse.integrations._common import (
    MappedLoader,
    Measured,
    MeasureOptions,
    Schedule,
    dist_rank_world,
    measure_splits,
    metric_scalars,
)
from ncollapse.metrics import NCMetrics
from ncollapse.rundir import RunWriter

__all__ = ["Tracked", "Tracker"]

#: How the splits are named for the loggers (nc/<name>/...) and in the run directory.
RUN_SPLITS = {"train": "train", "val": "test"}


class Tracker:
    """Measures a model at the chosen epochs and records the results.

    ``run_dir`` (optional) becomes a run directory; ``config`` is recorded as its
    ``config.toml`` (plain values, nested mappings become tables). ``snapshot_size`` training
    samples (the first ones of the data set) are kept per measurement for the animation.
    """

    def __init__(self, options: MeasureOptions, schedule: Schedule, *,
                 run_dir: str | Path | None = None, config: Mapping[str, Any] | None = None,
                 snapshot_size: int = 300, exact_shards: bool = True, prefix: str = "nc") -> None:
        if snapshot_size < 0:
            raise ValueError(f"snapshot_size must be >= 0, got {snapshot_size}")
        self.options = options
        self.schedule = schedule
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.config = dict(config or {})
        self.snapshot_size = snapshot_size
        self.exact_shards = exact_shards
        self.prefix = prefix
        self.writer: RunWriter | None = None
        self.history: list[tuple[int, dict[str, NCMetrics]]] = []
        self.layer_history: list[tuple[int, dict[str, dict[str, NCMetrics]]]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self, total_epochs: int | None) -> None:
        """Fix the schedule and, on rank 0, open the run directory."""
        self.schedule.start(total_epochs)
        if self.run_dir is not None and self.writer is None:
            rank, world = dist_rank_world()
            info = {"writer": "ncollapse.integrations", "world_size": world}
            self.writer = RunWriter(self.run_dir, self.config, epochs=total_epochs,
                                    enabled=rank == 0, run_info=info).open()

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the run finished (or failed with ``error``) and release the directory."""
        if self.writer is None:
            return
        if error is None:
            self.writer.close("finished")
        else:
            self.writer.close("failed", f"stopped by {type(error).__name__}: {error}")

    # ------------------------------------------------------------------ per epoch

    def log_epoch(self, epoch: int, *, lr: float | None = None, train_loss: float | None = None,
                  step: int | None = None, measured: Mapping[str, NCMetrics] | None = None
                  ) -> None:
        """One ``epochs.jsonl`` row; the training error is known at measured epochs."""
        if self.writer is None:
            return
        train = (measured or {}).get("train")
        error = None if train is None or train.accuracy is None else 1.0 - train.accuracy
        self.writer.log_epoch(epoch, lr=lr, train_loss=train_loss, train_error=error,
                              **({} if step is None else {"step": step}))

    def measure(self, model: nn.Module, loaders: Mapping[str, Iterable[Any]], epoch: int, *,
                lr: float | None = None, train_loss: float | None = None,
                step: int | None = None, batch_transform: Callable[[Any], Any] | None = None
                ) -> Measured:
        """Measure every split (a collective under torch.distributed: call on every rank) and
        record the row (and a snapshot) in the run directory. ``batch_transform`` maps each
        batch before the model sees it. The layers' metrics of the training split go into the
        row as ``layers`` (CSV columns ``layers.<name>.<metric>``)."""
        measured = measure_splits(model, loaders, self.options, exact_shards=self.exact_shards,
                                  batch_transform=batch_transform)
        self.history.append((epoch, measured.splits))
        if measured.layers:
            self.layer_history.append((epoch, measured.layers))
        if self.writer is not None and self.writer.enabled:
            train, test = measured.splits.get("train"), measured.splits.get("val")
            extra = {}
            if "train" in measured.layers:
                extra["layers"] = {name: m.to_dict()
                                   for name, m in measured.layers["train"].items()}
            snapshot = self._snapshot(model, loaders.get("train"), batch_transform)
            self.writer.log_measurement(
                epoch, train=train, test=test, snapshot=snapshot, lr=lr, step=step,
                train_loss=train_loss,
                train_error=None if train is None or train.accuracy is None
                else 1.0 - train.accuracy,
                test_accuracy=None if test is None else test.accuracy, **extra)
        return measured

    def scalars(self, measured: Measured) -> dict[str, float]:
        """``{"nc/train/nc1": ..., "nc/val/nc1": ..., "nc/train/layers/<name>/nc1": ...}``:
        floats only, None left out."""
        out: dict[str, float] = {}
        for split, metrics in measured.splits.items():
            out.update(metric_scalars(metrics, f"{self.prefix}/{split}/"))
        for split, per_layer in measured.layers.items():
            for name, metrics in per_layer.items():
                out.update(metric_scalars(metrics, f"{self.prefix}/{split}/layers/{name}/"))
        return out

    # ------------------------------------------------------------------ snapshots

    def _snapshot(self, model: nn.Module, loader: Iterable[Any] | None,
                  batch_transform: Callable[[Any], Any] | None) -> dict[str, Any] | None:
        if self.snapshot_size == 0 or not isinstance(loader, DataLoader):
            return None
        ds = loader.dataset
        if isinstance(ds, IterableDataset) or not isinstance(ds, Dataset) \
                or not hasattr(ds, "__len__"):
            return None
        subset = Subset(ds, range(min(self.snapshot_size, len(ds))))
        sub: Iterable[Any] = DataLoader(subset, batch_size=loader.batch_size or 64,
                                        collate_fn=loader.collate_fn,
                                        generator=torch.Generator())
        if batch_transform is not None:
            sub = MappedLoader(sub, batch_transform)
        o = self.options
        got = collect_features(model, sub, layer=o.layer, classifier=o.classifier, use=o.use,
                               input_key=o.input_key, label_key=o.label_key)
        return {"features": got.features, "labels": got.labels, "weight": got.weight,
                "bias": got.bias, "num_classes": int(got.weight.shape[0])}


class Tracked:
    """What the callbacks expose of their :class:`Tracker` (``self.tracker``)."""

    tracker: Tracker

    @property
    def history(self) -> list[tuple[int, dict[str, NCMetrics]]]:
        """Every ``(epoch, {split: NCMetrics})`` measured so far."""
        return self.tracker.history

    @property
    def layer_history(self) -> list[tuple[int, dict[str, dict[str, NCMetrics]]]]:
        """Every ``(epoch, {split: {layer: NCMetrics}})`` measured so far (with ``layers=``)."""
        return self.tracker.layer_history
