"""Training into the terminal phase: the loop, tracking, checkpoints, resume, divergence, DDP.

:func:`train` runs one config into a run directory (format in ``docs/architecture.md``);
:func:`lr_sweep` runs it over the paper's learning-rate grid and picks the best.
Under ``torchrun`` the same call trains with DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncollapse import distributed as D
from ncollapse.config import LR_SELECT, TrainConfig, load_config, paper_lr_grid, save_config
from ncollapse.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
    safe_torch_load,
)

__all__ = [
    "TrainingDiverged",
    "lr_at",
    "lr_sweep",
    "measurement_epochs",
    "run_summary",
    "train",
]

CHECKPOINT = Path("checkpoints") / "last.pt"
# With checkpoint_every = 0 ("auto") a checkpoint is written at the last epoch and otherwise
# once this many seconds have passed since the previous one.
AUTO_CHECKPOINT_SECONDS = 60.0
# The log files (epochs.jsonl, metrics.jsonl/.csv, status.json) are rewritten at least this
# often, at every checkpoint and at the end.
FLUSH_SECONDS = 5.0
_RUN_FILES = ("config.toml", "status.json", "metrics.jsonl", "epochs.jsonl", "checkpoints")


class TrainingDiverged(RuntimeError):
    """The loss (or a parameter) became NaN/Inf; the run is marked failed."""


# ---------------------------------------------------------------------------------- schedule


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of (1-based) ``epoch``: step ÷10 after 1/3 and 2/3 of the epochs, cosine
    from ``lr`` towards 0, or constant."""
    base, total = config.lr, config.epochs
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        drops = sum(epoch > total * f for f in (1 / 3, 2 / 3))
        return base * 0.1**drops
    if config.schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / total))
    raise ValueError(f"unknown schedule {config.schedule!r}; valid choices: step, cosine, constant")


def measurement_epochs(epochs: int, num: int) -> list[int]:
    """About ``num`` log-spaced epochs in [1, ``epochs``], distinct, always including the last."""
    if num <= 0:
        return []
    target = min(num, epochs)
    if target == 1:
        return [epochs]
    m = target
    while True:
        pts = np.unique(np.rint(np.geomspace(1, epochs, m)).astype(np.int64))
        if len(pts) >= target or m > 50 * target:
            break
        m += 1
    out = sorted(int(p) for p in pts)
    if out[-1] != epochs:  # geomspace ends exactly at ``epochs``; kept as a guarantee
        out.append(epochs)
    return out


# ---------------------------------------------------------------------------------- the state


class _Background:
    """Writes files in one background thread, so that waiting for the disk (fsync) overlaps
    the training; :meth:`wait` returns once everything submitted is on disk."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncollapse-write")
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self, *, quiet: bool = False) -> None:
        """Block until every submitted write is done; re-raise the first that failed
        (``quiet``: when already failing for another reason, don't)."""
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for f in pending:
            exc = f.exception()
            error = error or exc
        if error is not None and not quiet:
            raise error

    def close(self) -> None:
        self.wait(quiet=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@dataclass
class _Run:
    """Everything the loop carries between epochs (rank 0 also owns the files)."""

    out: Path
    config: TrainConfig
    info: D.DistInfo
    write: bool
    metrics: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    tpt_onset: int | None = None
    elapsed: float = 0.0
    last_flush: float = 0.0
    last_checkpoint: float = 0.0
    # Snapshots are written in the background; every flush waits for them first, so a row in
    # metrics.jsonl (and a checkpoint) never refers to a snapshot that is not on disk yet.
    writer: _Background = field(default_factory=_Background)

    def status(self, state: str, epoch: int, message: str | None = None) -> None:
        if not self.write:
            return
        atomic_write_json(self.out / "status.json", {
            "state": state, "epoch": epoch, "epochs": self.config.epochs,
            "tpt_onset_epoch": self.tpt_onset, "message": message,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def flush(self, state: str, epoch: int, message: str | None = None) -> None:
        """Wait for the snapshots in flight, then rewrite the log files (epochs, metrics, CSV)
        and the status, each atomically."""
        if not self.write:
            return
        self.writer.wait(quiet=state == "failed")
        atomic_write_jsonl(self.out / "epochs.jsonl", self.epochs)
        atomic_write_jsonl(self.out / "metrics.jsonl", self.metrics)
        atomic_write_text(self.out / "metrics.csv", metrics_csv(self.metrics))
        self.status(state, epoch, message)
        self.last_flush = time.perf_counter()


def metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The metrics rows flattened to CSV: nested dicts become ``"train.nc1"``-style columns."""
    flat = [_flatten(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in flat:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                         for k, v in r.items()})
    return buf.getvalue()


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------- building


def _load_data(cfg: TrainConfig, info: D.DistInfo):
    from ncollapse.data import load_dataset

    common = dict(root=cfg.root, normalize=cfg.normalize, seed=cfg.seed, **cfg.dataset_options)

    def load() -> tuple[Any, Any]:
        train_ds = load_dataset(cfg.dataset, split="train", download=cfg.download,
                                per_class=cfg.per_class, imbalance=cfg.imbalance,
                                ratio=cfg.ratio, **common)
        test_ds = None
        if cfg.measure_test:
            # The test split is used whole; the Gaussian mixture sizes it by per_class too.
            extra = {"per_class": cfg.per_class} if cfg.dataset == "gaussian" else {}
            test_ds = load_dataset(cfg.dataset, split="test", download=cfg.download,
                                   **extra, **common)
        return train_ds, test_ds

    if info.distributed and cfg.download:  # rank 0 downloads, the others read afterwards
        if info.is_main:
            out = load()
        D.barrier(info)
        if not info.is_main:
            out = load()
        return out
    return load()


def _build(cfg: TrainConfig, train_ds, device: torch.device):
    from ncollapse.losses import build_loss
    from ncollapse.models import build_model

    model = build_model(cfg.model, input_shape=tuple(train_ds.input_shape),
                        num_classes=train_ds.num_classes, width=cfg.width, depth=cfg.depth,
                        batchnorm=cfg.batchnorm, fixed_etf_classifier=cfg.fixed_etf_classifier,
                        seed=cfg.seed).to(device)
    criterion = build_loss(cfg.loss, num_classes=train_ds.num_classes,
                           label_smoothing=cfg.label_smoothing, mse_scale=cfg.mse_scale,
                           focal_gamma=cfg.focal_gamma)
    if isinstance(criterion, nn.Module):
        criterion = criterion.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid choices: sgd, adam")
    return model, criterion, opt


def _snapshot_indices(targets: torch.Tensor, per_class: int, seed: int) -> np.ndarray:
    """A fixed subset: ``per_class`` random samples of every class (fewer if a class is small)."""
    y = targets.cpu().numpy()
    rng = np.random.default_rng([seed, 8128])
    chosen = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------- evaluation


@dataclass
class _Eval:
    loss: float
    error: float
    metrics: dict[str, Any] | None = None
    means: torch.Tensor | None = None  # (C, d) float64 class means (full split, all ranks)
    global_mean: torch.Tensor | None = None
    features: torch.Tensor | None = None  # this rank's features (float32), for mse_decomposition
    labels: torch.Tensor | None = None


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


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: D.DistInfo,
              cfg: TrainConfig, criterion, num_classes: int, *, measure: bool,
              means: bool = False, ncc_means: torch.Tensor | None = None) -> _Eval:
    """Loss and error (eval mode) on the whole split; with ``measure`` also the NC metrics and,
    with ``means``, the float64 class means and global mean."""
    D.broadcast_buffers(model, info)  # BatchNorm statistics: every rank evaluates rank 0's model
    was_training = model.training
    model.eval()
    try:
        feats, logits, labels, loss_sum, wrong = _forward_shard(
            model, x, y, info, cfg.eval_batch_size, criterion, keep=measure)
    finally:
        model.train(was_training)
    sums = torch.stack([loss_sum, wrong.double()])
    D.all_reduce_sum(sums, info)
    n = x.shape[0]
    result = _Eval(loss=float(sums[0]) / n, error=float(sums[1]) / n)
    if not measure:
        return result
    weight = model.classifier.weight  # this rank's share may be empty: shapes from the layer
    f = _joined(feats, weight.new_zeros(0, weight.shape[1]))
    z = _joined(logits, weight.new_zeros(0, weight.shape[0]))
    labels_all = _joined(labels, y[:0])
    bad = torch.tensor([_count_nonfinite([f, z])], dtype=torch.float64, device=x.device)
    if float(D.all_reduce_sum(bad, info)[0]) > 0:  # every rank agrees, so none waits alone
        raise TrainingDiverged("the features or logits became NaN/Inf")
    result.metrics = _nc_metrics(model, f, z, labels_all, num_classes, info,
                                 ncc_means=ncc_means)
    if means:
        result.means, result.global_mean = _class_means(f, labels_all, num_classes, info)
    result.features, result.labels = f, labels_all
    return result


def _nc_metrics(model: nn.Module, f: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                num_classes: int, info: D.DistInfo, *, ncc_means: torch.Tensor | None = None
                ) -> dict[str, Any]:
    """NCMetrics of this split (features ``f``, logits ``z``, labels ``y``) as a dict.

    One process: :func:`ncollapse.measure` on the features in memory. Several: each rank
    feeds its shard to ``NCAccumulator``, whose ``begin_second_pass()`` and ``compute()``
    all-reduce the statistics (exactly) across ranks.
    """
    from ncollapse.metrics import NCAccumulator, measure

    weight = model.classifier.weight.detach()
    bias = model.classifier.bias
    bias = None if bias is None else bias.detach()
    if info.distributed:
        acc = NCAccumulator(num_classes=num_classes, weight=weight, bias=bias,
                            ncc_means=ncc_means)
        if len(y):  # a rank may hold no samples (fewer samples than processes)
            acc.update(f, y, z)
        acc.begin_second_pass()
        if len(y):
            acc.update(f, y, z)
        return acc.compute().to_dict()
    return measure(f, y, weight=weight, bias=bias, num_classes=num_classes, logits=z,
                   ncc_means=ncc_means).to_dict()


def _class_means(f: torch.Tensor, y: torch.Tensor, num_classes: int, info: D.DistInfo
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 class means (C, d) and global mean of the split (exact sums reduced across
    ranks), for the snapshots and as the test split's NCC centres."""
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device)
    sums.index_add_(0, y, f.double())
    counts = torch.bincount(y, minlength=num_classes).double()
    both = torch.cat([sums, counts.unsqueeze(1)], dim=1)
    D.all_reduce_sum(both, info)
    sums, counts = both[:, :-1], both[:, -1]
    return sums / counts.clamp_min(1).unsqueeze(1), sums.sum(0) / counts.sum()


def _mse_decomposition(ev: _Eval, model: nn.Module, cfg: TrainConfig, info: D.DistInfo
                       ) -> dict[str, float] | None:
    """[Han22]'s split of the MSE loss on the full train features (rank 0), λ = weight decay."""
    try:
        from ncollapse.theory.central_path import mse_decomposition
    except ImportError:  # pragma: no cover - the theory lab is part of the package
        return None
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
        warnings.warn(f"MSE decomposition not recorded: {exc}", stacklevel=2)
        return None
    return {k: float(dec[k]) for k in ("loss", "nc1", "nc2_3", "ls_perp")}


def _write_snapshot(run: _Run, epoch: int, model: nn.Module, x_snap: torch.Tensor,
                    y_snap: torch.Tensor, snap_idx: torch.Tensor, ev: _Eval) -> None:
    """Queue ``snapshots/epoch_<e>.npz`` for the background writer (the arrays are copies, so
    the training may go on changing the model meanwhile)."""
    if run.info.distributed:  # rank 0 holds only its shard of the features: recompute
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            f = model.features(x_snap).float().cpu().numpy()
        model.train(was_training)
    else:  # the features of the whole train set are at hand (same eval-mode forward)
        f = ev.features[snap_idx].float().cpu().numpy()
    arrays: dict[str, np.ndarray] = {
        "features": f.astype(np.float32),
        "labels": y_snap.cpu().numpy().astype(np.int64),
        "means": ev.means.cpu().numpy().astype(np.float64),
        "global_mean": ev.global_mean.cpu().numpy().astype(np.float64),
        "weight": model.classifier.weight.detach().double().cpu().numpy().copy(),
        "epoch": np.asarray(epoch, dtype=np.int64),
        "nc1": np.asarray(_nan(ev.metrics.get("nc1")), dtype=np.float64),
    }
    if model.classifier.bias is not None:
        arrays["bias"] = model.classifier.bias.detach().double().cpu().numpy().copy()
    run.writer.submit(_save_npz, run.out / "snapshots" / f"epoch_{epoch:05d}.npz", arrays)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ---------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG users may seed
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1]),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np_state = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                n["gauss"])
    np.random.set_state(np_state)  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _save_checkpoint(run: _Run, epoch: int, model: nn.Module, opt: torch.optim.Optimizer
                     ) -> None:
    if not run.write:
        return
    atomic_torch_save({
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        # The schedule is a pure function of the epoch (lr_at); recorded for readers.
        "scheduler": {"schedule": run.config.schedule, "last_epoch": epoch,
                      "lr": lr_at(run.config, epoch)},
        "epoch": epoch,
        # The batch order of epoch e is a function of (seed, e) (DistributedSampler), so this
        # is the whole state of the data order.
        "sampler": {"seed": run.config.seed, "epoch": epoch},
        "rng": _rng_state(),
        "tpt_onset_epoch": run.tpt_onset,
        "elapsed": run.elapsed,
    }, run.out / CHECKPOINT)


# ---------------------------------------------------------------------------------- train


def train(config: TrainConfig | None = None, *, out: str | Path, resume: bool = False,
          progress: bool = True) -> Path:
    """Train ``config`` into the run directory ``out`` and return its path.

    ``resume=True`` continues the run in ``out`` from its last checkpoint (the config is read
    from ``out/config.toml``; a given ``config`` must match it except for ``device`` and
    ``deterministic``).
    Raises :class:`TrainingDiverged` if the loss becomes NaN/Inf (the run is marked failed and
    its last good checkpoint kept), ``ValueError`` for a bad config or an occupied ``out``.
    """
    out = Path(out)
    config = _resolve_config(config, out, resume)
    info = D.setup(config.device)
    restore = None
    if config.deterministic:  # opt-in: CPU runs with a seed are reproducible without it
        restore = (torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        return _train(config, out, resume, progress, info)
    finally:
        if restore is not None:
            torch.use_deterministic_algorithms(restore[0], warn_only=restore[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = restore[2:]
        D.teardown(info)


def _resolve_config(config: TrainConfig | None, out: Path, resume: bool) -> TrainConfig:
    if not resume:
        if config is None:
            raise ValueError("train() needs a config (or resume=True with an existing run dir)")
        config.validate()
        if out.exists() and any((out / f).exists() for f in _RUN_FILES):
            raise ValueError(f"{out} already holds a run; continue it with --resume {out} "
                             "or choose another --out")
        return config
    saved_path = out / "config.toml"
    if not saved_path.is_file():
        raise FileNotFoundError(f"cannot resume: {saved_path} not found (is {out} a run dir?)")
    saved = load_config(path=saved_path)
    if config is None:
        return saved
    config.validate()
    free = ("device", "deterministic")  # how to run, not what to compute
    diff = [k for k, v in saved.to_dict().items()
            if k not in free and config.to_dict()[k] != v]
    if diff:
        raise ValueError(f"cannot resume {out} with a different config (differs in: "
                         f"{', '.join(diff)}); resume without a config or start a new run")
    return saved.replace(device=config.device, deterministic=config.deterministic)


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: bool, info: D.DistInfo) -> Path:
    run = _Run(out=out, config=cfg, info=info, write=info.is_main)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                         f"{info.world_size} processes; pick a multiple")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 - for user code relying on the global RNG
    random.seed(cfg.seed)
    device = info.device

    train_ds, test_ds = _load_data(cfg, info)
    num_classes = train_ds.num_classes
    x_train = train_ds.inputs.to(device)
    y_train = train_ds.targets.to(device)
    x_test = test_ds.inputs.to(device) if test_ds is not None else None
    y_test = test_ds.targets.to(device) if test_ds is not None else None
    model, criterion, opt = _build(cfg, train_ds, device)
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    snap_idx = _snapshot_indices(train_ds.targets, cfg.snapshot_per_class, cfg.seed)
    snap_idx_t = torch.as_tensor(snap_idx, device=device)
    x_snap, y_snap = x_train[snap_idx_t], y_train[snap_idx_t]
    measure_at = set(measurement_epochs(cfg.epochs, cfg.num_measurements))
    sampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed,
        drop_last=False)
    local_batch = cfg.batch_size // info.world_size
    steps_per_epoch = math.ceil(len(sampler) / local_batch)

    start = 0
    if resume:
        if _finished(out, cfg):  # nothing to do; leave the files untouched
            return out
        start = _restore(run, model, opt)
    elif run.write:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", extra_run={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "world_size": info.world_size,
        })
    run.flush("running", start)
    D.barrier(info)

    bar = _progress_bar(start, cfg.epochs, progress and info.is_main)
    t0 = time.perf_counter() - run.elapsed
    run.last_flush = run.last_checkpoint = time.perf_counter()
    epoch = start
    last_error = None
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            lr = lr_at(cfg, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            net.train()
            sampler.set_epoch(epoch)
            order = torch.as_tensor(list(iter(sampler)), device=device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for i in range(0, order.numel(), local_batch):
                b = order[i:i + local_batch]
                loss = criterion(net(x_train[b]), y_train[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * b.numel()
            D.all_reduce_sum(loss_sum, info)
            train_loss = float(loss_sum) / (order.numel() * info.world_size)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"the training loss became {train_loss} (lr {lr:g})")

            measuring = epoch in measure_at
            train_error = None
            row: dict[str, Any] | None = None
            if measuring:
                ev = _evaluate(model, x_train, y_train, info, cfg, criterion, num_classes,
                               measure=True, means=True)
                train_error = ev.error
                row = {"epoch": epoch, "step": epoch * steps_per_epoch, "lr": lr,
                       "time": None, "train_loss": ev.loss, "train_error": ev.error,
                       "test_loss": None, "test_accuracy": None, "train": ev.metrics,
                       "test": None}
                if x_test is not None:
                    te = _evaluate(model, x_test, y_test, info, cfg, criterion, num_classes,
                                   measure=True, ncc_means=ev.means)
                    row.update(test_loss=te.loss, test_accuracy=1.0 - te.error, test=te.metrics)
                if cfg.loss == "mse":
                    dec = _mse_decomposition(ev, model, cfg, info)
                    if dec is not None:
                        row["mse_decomposition"] = dec
                if run.write and len(snap_idx):
                    _write_snapshot(run, epoch, model, x_snap, y_snap, snap_idx_t, ev)
            elif cfg.track_train_error and run.tpt_onset is None:
                train_error = _evaluate(model, x_train, y_train, info, cfg, criterion,
                                        num_classes, measure=False).error
            if run.tpt_onset is None and train_error == 0:
                run.tpt_onset = epoch

            now = time.perf_counter()
            run.elapsed = now - t0
            run.epochs.append({"epoch": epoch, "lr": lr, "train_loss": train_loss,
                               "train_error": train_error, "time": run.elapsed})
            if row is not None:
                row["time"] = run.elapsed
                run.metrics.append(row)
            # Logs first, then the checkpoint: rows past the checkpoint are dropped on resume.
            if _checkpoint_due(cfg, epoch, now - run.last_checkpoint):
                if not _finite_params(model):
                    raise TrainingDiverged(f"a parameter became NaN/Inf (lr {lr:g})")
                run.flush("running", epoch)
                _save_checkpoint(run, epoch, model, opt)
                run.last_checkpoint = time.perf_counter()
            elif now - run.last_flush >= FLUSH_SECONDS:
                run.flush("running", epoch)
            if train_error is not None:
                last_error = train_error
            _update_bar(bar, train_loss, last_error, run.metrics)
    except TrainingDiverged as exc:
        _close(bar)
        run.writer.close()
        message = (f"training diverged at epoch {epoch}: {exc}; lower --lr (or pick one with "
                   f"--lr-sweep). The last good checkpoint is kept in {out / CHECKPOINT}.")
        run.epochs = [r for r in run.epochs if r["epoch"] < epoch]
        run.metrics = [r for r in run.metrics if r["epoch"] < epoch]
        run.flush("failed", epoch - 1, message)
        raise TrainingDiverged(message) from None
    except BaseException as exc:
        _close(bar)
        run.writer.close()
        done = run.epochs[-1]["epoch"] if run.epochs else start
        run.flush("failed", done, f"stopped at epoch {done} by {type(exc).__name__}: {exc}; "
                   f"continue with: ncollapse train --resume {out}")
        raise
    _close(bar)
    run.flush("finished", cfg.epochs)
    run.writer.close()
    D.barrier(info)
    return out


def _checkpoint_due(cfg: TrainConfig, epoch: int, since: float) -> bool:
    if epoch == cfg.epochs:
        return True
    if cfg.checkpoint_every > 0:
        return epoch % cfg.checkpoint_every == 0
    return since >= AUTO_CHECKPOINT_SECONDS


def _finished(out: Path, cfg: TrainConfig) -> bool:
    try:
        status = json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("state") == "finished" and status.get("epoch") == cfg.epochs


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _restore(run: _Run, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load the last checkpoint; drop rows and snapshots after it. Returns its epoch (0: none)."""
    out = run.out
    path = out / CHECKPOINT
    if path.is_file():
        ckpt = safe_torch_load(path, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        epoch = int(ckpt["epoch"])
        run.tpt_onset = ckpt["tpt_onset_epoch"]
        run.elapsed = float(ckpt["elapsed"])
    else:
        epoch = 0
    for name, rows in (("metrics.jsonl", run.metrics), ("epochs.jsonl", run.epochs)):
        if (out / name).is_file():
            rows.extend(r for r in read_jsonl(out / name) if r.get("epoch", 0) <= epoch)
    if run.write:
        for snap in (out / "snapshots").glob("epoch_*.npz"):
            if int(snap.stem.split("_")[1]) > epoch:
                snap.unlink()
        for tmp in (out / "snapshots").glob(".epoch_*.npz.*.tmp"):  # a write cut short
            tmp.unlink(missing_ok=True)
        run.flush("running", epoch)
    return epoch


def _progress_bar(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="epoch", dynamic_ncols=True,
                file=sys.stderr)


def _update_bar(bar, loss: float, error: float | None, metrics: list[dict[str, Any]]) -> None:
    if bar is None:
        return
    post = {"loss": f"{loss:.4g}"}
    if error is not None:
        post["err"] = f"{error:.4f}"
    nc1 = metrics[-1]["train"].get("nc1") if metrics and metrics[-1].get("train") else None
    if nc1 is not None:
        post["nc1"] = f"{nc1:.3g}"
    bar.set_postfix(post, refresh=False)
    bar.update(1)


def _close(bar) -> None:
    if bar is not None:
        bar.close()


# ---------------------------------------------------------------------------------- summary


def run_summary(out: str | Path) -> dict[str, Any]:
    """The headline numbers of a run dir: state, TPT onset, NC1 at onset and at the end, the
    final NC1–NC4 (NC2: equinorm/equiangularity of the means, NC3: self-duality, NC4: NCC
    mismatch), final train error and test accuracy."""
    out = Path(out)
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").is_file() \
        else {}
    rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
    onset = status.get("tpt_onset_epoch")
    last = rows[-1] if rows else {}
    train_m = last.get("train") or {}
    at_onset = None
    if onset is not None:
        after = [r for r in rows if r["epoch"] >= onset]
        at_onset = after[0] if after else None
    return {
        "run_dir": str(out), "state": status.get("state"), "message": status.get("message"),
        "epoch": status.get("epoch"), "epochs": status.get("epochs"),
        "tpt_onset_epoch": onset,
        "nc1_at_onset_epoch": at_onset["epoch"] if at_onset else None,
        "nc1_at_onset": (at_onset.get("train") or {}).get("nc1") if at_onset else None,
        "final_epoch": last.get("epoch"),
        "nc1": train_m.get("nc1"),
        "nc2_equinorm_means": train_m.get("equinorm_means"),
        "nc2_equiangular_means": train_m.get("equiangular_means"),
        "nc2_maxangle_means": train_m.get("maxangle_means"),
        "nc3_self_duality": train_m.get("self_duality"),
        "nc4_ncc_mismatch": train_m.get("ncc_mismatch"),
        "train_error": last.get("train_error"), "test_accuracy": last.get("test_accuracy"),
        "time": last.get("time"),
    }


# ---------------------------------------------------------------------------------- lr sweep


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
            last = read_jsonl(run_dir / "metrics.jsonl")[-1]
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
