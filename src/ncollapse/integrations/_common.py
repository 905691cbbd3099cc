"""What every integration shares: optional imports, the measurement schedule, clean scalars,
exact per-rank shards of a loader, and one measurement of a model over its splits."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ncollapse.collect import measure_model
from ncollapse.metrics import NCMetrics
from ncollapse.training import measurement_epochs  # the training loop's own rule

__all__ = [
    "MappedLoader",
    "MeasureOptions",
    "Measured",
    "Schedule",
    "dist_rank_world",
    "measure_splits",
    "metric_scalars",
    "require",
    "measurement_loader",
]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the '{module}' package, which is not installed; install it with "
            f"pip install 'ncollapse[{extra}]'"
        ) from exc


# ------------------------------------------------------------------------------ scalars


def metric_scalars(metrics: NCMetrics | Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``{prefix + name: float}`` for every metric that has a value (None and NaN left out).

    ``NCMetrics.to_dict()`` mixes floats, ints and None; loggers want floats only.
    """
    values = metrics.to_dict() if isinstance(metrics, NCMetrics) else dict(metrics)
    out: dict[str, float] = {}
    for name, value in values.items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isfinite(value):
            out[f"{prefix}{name}"] = value
    return out


# ----------------------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """Which (1-based) epochs to measure at the end of.

    ``epochs``: explicit epoch numbers, a predicate ``epoch -> bool``, or None for about
    ``num`` log-spaced epochs over ``total`` (as in the paper; always the last one). Without a
    known total, None measures at 1, 2, 3, 4, 5, 7, 10, 14, 19, 27, ... (7 per decade).
    """

    epochs: Iterable[int] | Callable[[int], bool] | None = None
    num: int = 50
    _chosen: set[int] | None = field(default=None, init=False, repr=False)
    _pred: Callable[[int], bool] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"num_measurements must be at least 1, got {self.num}")
        if callable(self.epochs):
            self._pred = self.epochs  # type: ignore[assignment]
        elif self.epochs is not None:
            chosen = {int(e) for e in self.epochs}
            if not chosen or min(chosen) < 1:
                raise ValueError(f"measurement epochs must be 1-based epoch numbers, got "
                                 f"{sorted(chosen)}")
            self._chosen = chosen

    def start(self, total: int | None) -> None:
        """Fix the default schedule once the number of epochs is known (None: open-ended)."""
        if self.epochs is None:
            self._chosen = set(measurement_epochs(total, self.num)) if total and total > 0 else None

    def __call__(self, epoch: int) -> bool:
        if self._pred is not None:
            return bool(self._pred(epoch))
        if self._chosen is not None:
            return epoch in self._chosen
        # open-ended default: the distinct rounded values of 10 ** (k / 7)
        top = int(7 * math.log10(max(epoch, 1))) + 2
        return epoch in {round(10 ** (k / 7)) for k in range(top)}


# ------------------------------------------------------------------------------ sharding


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _StridedShard(Sampler[int]):
    """Indices rank, rank + world, ... of a data set of ``n`` samples: every sample on exactly
    one rank, none repeated (a DistributedSampler pads the last shard with repeats)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = range(rank, n, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def measurement_loader(loader: Iterable[Any], rank: int = 0, world: int = 1) -> Iterable[Any]:
    """A loader over the same map-style data set, in order, that gives this rank its exact
    shard (same batch size, collate function and workers). It has its own random generator, so
    measuring leaves the training's random stream (shuffling, dropout) untouched. The loader
    itself when its data set cannot be indexed (then, under DDP, a padding sampler may count
    some samples twice)."""
    if not isinstance(loader, DataLoader):
        return loader
    ds = loader.dataset
    if isinstance(ds, IterableDataset) or not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
        return loader
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1
    return DataLoader(ds, batch_size=batch_size, sampler=_StridedShard(len(ds), rank, world),
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory, generator=torch.Generator())


# ----------------------------------------------------------------------------- measuring


@dataclass
class MeasureOptions:
    """Where the features come from, as in :func:`ncollapse.measure_model`: ``layer``/
    ``classifier``/``use`` for the main measurement (default: the input of the classifier),
    and optionally ``layers`` (names, glob patterns or modules) measured as well, each layer's
    output pooled by ``pool``."""

    layer: nn.Module | str | None = None
    classifier: nn.Module | str | None = None
    use: str | None = None
    layers: Sequence[nn.Module | str] | None = None
    pool: str | Callable[[torch.Tensor], torch.Tensor] = "flatten"
    max_batches: int | None = None
    input_key: str | None = None
    label_key: str | None = None
    full_covariance: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"layer": self.layer, "classifier": self.classifier, "use": self.use,
                "max_batches": self.max_batches, "input_key": self.input_key,
                "label_key": self.label_key, "full_covariance": self.full_covariance}

    def layer_kwargs(self) -> dict[str, Any]:
        return {"layers": list(self.layers or ()), "classifier": self.classifier,
                "pool": self.pool, "max_batches": self.max_batches,
                "input_key": self.input_key, "label_key": self.label_key,
                "full_covariance": self.full_covariance}


@dataclass
class Measured:
    """One measurement: the main metrics per split, and per split the metrics of every
    requested layer (name -> NCMetrics, in forward order)."""

    splits: dict[str, NCMetrics] = field(default_factory=dict)
    layers: dict[str, dict[str, NCMetrics]] = field(default_factory=dict)


class MappedLoader:
    """``fn(batch)`` for every batch of ``loader``; iterable again as often as the loader."""

    def __init__(self, loader: Iterable[Any], fn: Callable[[Any], Any]) -> None:
        self.loader, self.fn = loader, fn

    def __iter__(self) -> Iterator[Any]:
        return (self.fn(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def measure_splits(model: nn.Module, loaders: Mapping[str, Iterable[Any]],
                   options: MeasureOptions, *, exact_shards: bool = True,
                   batch_transform: Callable[[Any], Any] | None = None) -> Measured:
    """``measure_model`` (eval mode, modes restored) on each named loader. Under
    torch.distributed every rank must call this with its loaders; with ``exact_shards`` each
    rank measures its strided shard of the data set, so the synced statistics are those of
    the whole data set exactly, each sample once (see :func:`measurement_loader`).
    ``batch_transform`` maps each batch first (e.g. a framework's precision conversion of the
    inputs)."""
    rank, world = dist_rank_world()
    out = Measured()
    for split, loader in loaders.items():
        if exact_shards:
            loader = measurement_loader(loader, rank, world)
        if batch_transform is not None:
            loader = MappedLoader(loader, batch_transform)
        out.splits[split] = measure_model(model, loader, **options.kwargs())
        if options.layers:
            out.layers[split] = measure_model(model, loader, **options.layer_kwargs())
    return out
