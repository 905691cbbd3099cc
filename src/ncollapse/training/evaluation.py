"""Measuring a model during training: eval-mode loss and error of a split, its NC metrics, class
means, the MSE decomposition, and the arrays of a snapshot. Works in one process and under DDP
(every rank evaluates its share; sums are all-reduced exactly)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ncollapse import distributed as D
from ncollapse.collect import measure_model
from ncollapse.config import TrainConfig
from ncollapse.metrics import (
    NCAccumulator,
    NCMetrics,
    mse_decomposition,
)
from ncollapse.validation import user_stacklevel

__all__ = ["Evaluation", "TrainingDiverged", "evaluate", "layer_metrics", "mse_terms",
           "snapshot_of"]


class TrainingDiverged(RuntimeError):
    """The loss (or a parameter) became NaN/Inf; the run is marked failed."""


@dataclass
class Evaluation:
    """One split, eval mode: loss and error, and with a measurement its NC metrics, float64 class
    means and global mean (full split, all ranks) and this rank's features and labels."""

    loss: float
    error: float
    metrics: dict[str, Any] | None = None
    means: torch.Tensor | None = None
    global_mean: torch.Tensor | None = None
    features: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: D.DistInfo,
             cfg: TrainConfig, criterion, num_classes: int, *, measure_nc: bool,
             means: bool = False, ncc_means: torch.Tensor | None = None) -> Evaluation:
    """Loss and error (eval mode) on the whole split; with ``measure_nc`` also the NC metrics
    and, with ``means``, the float64 class means and global mean."""
    D.broadcast_buffers(model, info)  # BatchNorm statistics: every rank evaluates rank 0's model
    was_training = model.training
    model.eval()
    try:
        feats, logits, labels, loss_sum, wrong = _forward_shard(
            model, x, y, info, cfg.eval_batch_size, criterion, keep=measure_nc)
    finally:
        model.train(was_training)
    sums = torch.stack([loss_sum, wrong.double()])
    D.all_reduce_sum(sums, info)
    n = x.shape[0]
    result = Evaluation(loss=float(sums[0]) / n, error=float(sums[1]) / n)
    if not measure_nc:
        return result
    weight = model.classifier.weight  # this rank's share may be empty: shapes from the layer
    f = _joined(feats, weight.new_zeros(0, weight.shape[1]))
    z = _joined(logits, weight.new_zeros(0, weight.shape[0]))
    labels_all = _joined(labels, y[:0])
    bad = torch.tensor([_count_nonfinite([f, z])], dtype=torch.float64, device=x.device)
    if float(D.all_reduce_sum(bad, info)[0]) > 0:  # every rank agrees, so none waits alone
        raise TrainingDiverged("the features or logits became NaN/Inf")
    acc = _accumulator(model, num_classes, info, ncc_means)
    try:
        result.metrics = _nc_metrics(acc, f, z, labels_all)
    except ValueError as exc:
        # The features are finite (checked above), so this is geometry the metrics cannot
        # define (e.g. every feature 0 after dead ReLUs): recorded as undefined (null), and the
        # training goes on, with a warning saying why.
        warnings.warn(f"NC metrics not defined at this measurement ({exc}); recorded as null",
                      stacklevel=2)
        result.metrics = {**dict.fromkeys(NCMetrics.field_names()), "num_classes": num_classes,
                          "num_samples": int(labels_all.numel()), "dim": int(f.shape[1])}
    if means:  # the measurement's own float64 means (zero rows for classes without samples)
        mu, result.global_mean = acc.class_means()
        result.means = torch.nan_to_num(mu, nan=0.0)
    result.features, result.labels = f, labels_all
    return result


def layer_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                  info: D.DistInfo) -> dict[str, dict[str, Any]]:
    """NC metrics of the layers ``cfg.layers`` names (conv maps averaged over space) on
    (x, y), in forward order, from one :func:`ncollapse.collect.measure_model` call; under
    torch.distributed each rank passes its strided shard and the statistics are synced."""
    if info.distributed:
        x, y = x[info.rank::info.world_size], y[info.rank::info.world_size]
    bs = cfg.eval_batch_size
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, y.shape[0], bs)]
    by_layer = measure_model(model, batches, layers=list(cfg.layers), pool="avg", cache=True)
    return {name: m.to_dict() for name, m in by_layer.items()}


def mse_terms(ev: Evaluation, model: nn.Module, cfg: TrainConfig, info: D.DistInfo
              ) -> dict[str, float] | None:
    """[Han22]'s split of the MSE loss on the full train features (rank 0), λ = weight decay;
    None on other ranks or when the identity does not apply (a warning says why)."""
    feats = D.gather_to_main(ev.features, info)
    labels = D.gather_to_main(ev.labels, info)
    if not info.is_main:
        return None
    bias = model.classifier.bias
    try:
        dec = mse_decomposition(feats, labels, model.classifier.weight.detach(),
                                None if bias is None else bias.detach(),
                                lam=cfg.weight_decay)
    except ValueError as exc:  # e.g. imbalanced classes, which the identity does not cover
        warnings.warn(f"MSE decomposition not recorded: {exc}", stacklevel=user_stacklevel())
        return None
    return {k: float(dec[k]) for k in ("loss", "nc1", "nc2_3", "ls_perp")}


def snapshot_of(model: nn.Module, ev: Evaluation, x_snap: torch.Tensor, y_snap: torch.Tensor,
                snap_idx: torch.Tensor, info: D.DistInfo) -> dict[str, Any]:
    """The snapshot of the fixed subset: its features (same eval-mode forward as the
    measurement), labels, the split's class means and global mean, the classifier."""
    if info.distributed:  # rank 0 holds only its shard of the features: recompute
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            f = model.features(x_snap)
        model.train(was_training)
    else:  # the features of the whole train set are at hand
        f = ev.features[snap_idx]
    bias = model.classifier.bias
    return {"features": f, "labels": y_snap, "means": ev.means, "global_mean": ev.global_mean,
            "weight": model.classifier.weight, "bias": bias}


# ----------------------------------------------------------------------------- internals


def _forward_shard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: D.DistInfo,
                   batch: int, criterion, *, keep: bool):
    """Eval-mode pass over this rank's share (rank::world) of ``x``: features, logits, sums."""
    n = x.shape[0]
    if info.world_size == 1:  # contiguous slices are views: no copy of the inputs
        chunks = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    else:
        idx = torch.arange(info.rank, n, info.world_size, device=x.device)
        chunks = [(x[b], y[b]) for b in idx.split(batch)]
    feats, logits, labels = [], [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    wrong = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.inference_mode():
        for xb, yb in chunks:
            f = model.features(xb)
            z = model.classifier(f)
            loss_sum += criterion(z, yb).double() * yb.numel()
            wrong += (z.argmax(dim=1) != yb).sum()
            if keep:
                feats.append(f)
                logits.append(z)
                labels.append(yb)
    return feats, logits, labels, loss_sum, wrong


def _count_nonfinite(tensors: Sequence[torch.Tensor]) -> int:
    """How many entries of ``tensors`` are NaN/Inf (a sum is finite when all entries are, so
    the entry-wise count runs only when some sum is not)."""
    if all(bool(torch.isfinite(t.sum())) for t in tensors):
        return 0
    return sum(int((~torch.isfinite(t)).sum()) for t in tensors)


def _joined(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts) if parts else empty


def _accumulator(model: nn.Module, num_classes: int, info: D.DistInfo,
                 ncc_means: torch.Tensor | None) -> NCAccumulator:
    """A two-pass accumulator for the model's classifier (synced across ranks when
    distributed)."""
    weight = model.classifier.weight.detach()
    bias = model.classifier.bias
    return NCAccumulator(num_classes=num_classes, weight=weight,
                         bias=None if bias is None else bias.detach(), ncc_means=ncc_means,
                         second_pass=True, distributed=info.distributed)


def _nc_metrics(acc: NCAccumulator, f: torch.Tensor, z: torch.Tensor, y: torch.Tensor
                ) -> dict[str, Any]:
    """NCMetrics of this split (features ``f``, logits ``z``, labels ``y``) as a dict: both
    passes of ``acc`` over the split; under torch.distributed each rank feeds its shard and
    ``begin_second_pass()`` and ``compute()`` all-reduce the statistics (exactly)."""
    if len(y):  # a rank may hold no samples (fewer samples than processes)
        acc.update(f, y)  # pass 1: the means (the logits decide in pass 2)
    acc.begin_second_pass()
    if len(y):
        acc.update(f, y, z)
    return acc.compute().to_dict()
