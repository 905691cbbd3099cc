"""The training loop: one config into one run directory, read top to bottom.

Data, model, optimiser; then per epoch: learning rate, one pass of SGD over the shuffled
training set, a measurement at the log-spaced epochs (NC metrics of each split, a snapshot),
the logs, a checkpoint when due. Measuring lives in :mod:`.evaluation`, checkpoints and resume
in :mod:`.checkpoints`, the files in :class:`ncollapse.rundir.RunWriter`.
Under ``torchrun`` the same call trains with DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncollapse import distributed as D
from ncollapse.config import TrainConfig, load_config
from ncollapse.data import load_dataset
from ncollapse.losses import build_loss
from ncollapse.models import build_model
from ncollapse.rundir import CHECKPOINT, CONFIG, RunWriter, config_differences, read_status
from ncollapse.training.checkpoints import checkpoint_due, load_checkpoint, save_checkpoint
from ncollapse.training.evaluation import (
    TrainingDiverged,
    evaluate,
    layer_metrics,
    mse_terms,
    snapshot_of,
)
from ncollapse.training.schedule import lr_at, measurement_epochs

__all__ = ["train"]


#: Called by :func:`train` on the main process after each measurement is written.
MeasurementHook = Callable[[int, Mapping[str, Any]], None]


def train(config: TrainConfig | None = None, *, out: str | Path, resume: bool = False,
          progress: bool = True, epochs: int | None = None,
          on_measurement: MeasurementHook | None = None) -> Path:
    """Train ``config`` into the run directory ``out`` and return its path.

    ``resume=True`` continues the run in ``out`` from its last checkpoint (the config is read
    from ``out/config.toml``; a given ``config`` must match it except for ``device`` and
    ``deterministic``); ``epochs`` changes its number of epochs (only with ``resume``).
    ``on_measurement(epoch, row)``, if given, is called on the main process right after each
    measurement is logged, with that row of ``metrics.jsonl`` (``"train"``/``"test"`` are the
    ``NCMetrics.to_dict()`` mappings): live logging, e.g. to TensorBoard.
    Raises :class:`TrainingDiverged` if the loss becomes NaN/Inf (the run is marked failed),
    ``ValueError`` for a bad config or an occupied ``out``, ``RunLocked`` when another process
    is writing to ``out``.
    """
    out = Path(out)
    config = _resolve_config(config, out, resume, epochs)
    info = D.setup(config.device)
    try:
        with _deterministic(config.deterministic), _sigterm_as_interrupt():
            return _train(config, out, resume, epochs is not None, progress, info,
                          on_measurement)
    finally:
        D.teardown(info)


def _train(cfg: TrainConfig, out: Path, resume: bool, epochs_changed: bool, progress: bool,
           info: D.DistInfo, on_measurement: MeasurementHook | None = None) -> Path:
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                         f"{info.world_size} processes; pick a multiple")
    if resume and not epochs_changed and _finished(out, cfg):
        return out  # nothing to do; leave the files untouched
    # The directory is claimed (lock, checks, config.toml) before anything slow happens.
    run = RunWriter(out, cfg, resume=resume, enabled=info.is_main,
                    run_info={"world_size": info.world_size})
    _open_on_every_rank(run, info)
    try:
        return _loop(run, cfg, out, resume, epochs_changed, progress, info, on_measurement)
    except BaseException as exc:  # failed while setting up (the loop closes the run itself)
        if run.written:
            run.close("failed", f"stopped before training by {type(exc).__name__}: {exc}")
        else:  # e.g. a refused resume: leave the directory as it was
            run.abandon()
        raise


def _loop(run: RunWriter, cfg: TrainConfig, out: Path, resume: bool, epochs_changed: bool,
          progress: bool, info: D.DistInfo, on_measurement: MeasurementHook | None) -> Path:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 - for user code relying on the global RNG
    random.seed(cfg.seed)
    device = info.device

    # data
    train_ds, test_ds = _load_data(cfg, info)
    num_classes = train_ds.num_classes
    x_train, y_train = train_ds.inputs.to(device), train_ds.targets.to(device)
    x_test = test_ds.inputs.to(device) if test_ds is not None else None
    y_test = test_ds.targets.to(device) if test_ds is not None else None
    snap_idx = torch.as_tensor(_snapshot_indices(train_ds.targets, cfg.snapshot_per_class,
                                                 cfg.seed), device=device)
    x_snap, y_snap = x_train[snap_idx], y_train[snap_idx]
    sampler = torch.utils.data.DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed,
        drop_last=False)
    local_batch = cfg.batch_size // info.world_size
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    measure_at = set(measurement_epochs(cfg.epochs, cfg.num_measurements))

    # model, loss, optimiser
    model, criterion, opt = _build(cfg, train_ds, device)
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # where to start
    start, tpt_onset = 0, None
    if resume:
        ckpt = load_checkpoint(out, cfg, model, opt, epochs_changed=epochs_changed)
        if ckpt is not None:
            start, tpt_onset = int(ckpt["epoch"]), ckpt["tpt_onset_epoch"]
        run.restore(start, tpt_onset=tpt_onset,
                    elapsed=float(ckpt["elapsed"]) if ckpt is not None else 0.0)
        if epochs_changed:
            run.write_config()  # the new epoch count, now that the checkpoint allows it
    D.barrier(info)

    bar = _progress_bar(start, cfg.epochs, progress and info.is_main)
    last_checkpoint = time.perf_counter()
    epoch, last_error = start, None
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            # one epoch of SGD
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

            # measurement
            train_error = None
            if epoch in measure_at:
                ev = evaluate(model, x_train, y_train, info, cfg, criterion, num_classes,
                              measure_nc=True, means=True)
                train_error = ev.error
                row: dict[str, Any] = {"step": epoch * steps_per_epoch, "lr": lr,
                                       "time": run.elapsed, "train_loss": ev.loss,
                                       "train_error": ev.error}
                te = None
                if x_test is not None:
                    te = evaluate(model, x_test, y_test, info, cfg, criterion, num_classes,
                                  measure_nc=True, ncc_means=ev.means)
                    row.update(test_loss=te.loss, test_accuracy=1.0 - te.error)
                if cfg.layers:  # collapse through depth (one pass, every named layer)
                    row["layers"] = layer_metrics(model, x_train, y_train, cfg, info)
                if cfg.loss == "mse":
                    terms = mse_terms(ev, model, cfg, info)
                    if terms is not None:
                        row["mse_decomposition"] = terms
                snapshot = (snapshot_of(model, ev, x_snap, y_snap, snap_idx, info)
                            if len(snap_idx) and info.is_main else None)
                run.log_measurement(epoch, train=ev.metrics, test=te and te.metrics,
                                    snapshot=snapshot, **row)
                if on_measurement is not None and info.is_main:
                    on_measurement(epoch, {"epoch": epoch, "train": ev.metrics,
                                           "test": te and te.metrics, **row})
            elif cfg.track_train_error and tpt_onset is None:
                train_error = evaluate(model, x_train, y_train, info, cfg, criterion,
                                       num_classes, measure_nc=False).error
            if tpt_onset is None and train_error == 0:
                tpt_onset = epoch

            # logs, then the checkpoint (rows past the checkpoint are dropped on resume)
            run.log_epoch(epoch, lr=lr, train_loss=train_loss, train_error=train_error)
            now = time.perf_counter()
            if checkpoint_due(cfg, epoch, now - last_checkpoint):
                if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    raise TrainingDiverged(f"a parameter became NaN/Inf (lr {lr:g})")
                run.flush("running")
                if info.is_main:
                    save_checkpoint(out, cfg, epoch, model, opt, tpt_onset=tpt_onset,
                                    elapsed=run.elapsed)
                last_checkpoint = time.perf_counter()
            if train_error is not None:
                last_error = train_error
            _update_bar(bar, train_loss, last_error, run.metrics)
    except TrainingDiverged as exc:
        _close(bar)
        kept = (f"the last good checkpoint is kept in {out / CHECKPOINT}"
                if (out / CHECKPOINT).is_file() else "no checkpoint had been written yet")
        message = (f"training diverged at epoch {epoch}: {exc}; lower --lr (or pick one with "
                   f"--lr-sweep); {kept}.")
        run.epochs[:] = [r for r in run.epochs if r["epoch"] < epoch]
        run.metrics[:] = [r for r in run.metrics if r["epoch"] < epoch]
        run.close("failed", message, epoch=epoch - 1)
        raise TrainingDiverged(message) from None
    except BaseException as exc:
        _close(bar)
        done = run.last_epoch or start
        why = "SIGTERM" if isinstance(exc, _Terminated) else type(exc).__name__
        detail = f": {exc}" if str(exc) and not isinstance(exc, _Terminated) else ""
        how = (f"continue with: ncollapse train --resume {out}" if (out / CHECKPOINT).is_file()
               else f"no checkpoint yet, so `ncollapse train --resume {out}` starts it over")
        run.close("failed", f"stopped at epoch {done} by {why}{detail}; {how}")
        raise
    _close(bar)
    run.close("finished", epoch=cfg.epochs)
    D.barrier(info)
    return out


# ----------------------------------------------------------------------------- set-up


def _resolve_config(config: TrainConfig | None, out: Path, resume: bool,
                    epochs: int | None) -> TrainConfig:
    if not resume:
        if config is None:
            raise ValueError("train() needs a config (or resume=True with an existing run dir)")
        if epochs is not None:
            raise ValueError("epochs= changes the length of a resumed run; for a new run set "
                             "it in the config")
        return config.validate().resolved()  # config.toml records the model's defaults too
    saved_path = out / CONFIG
    if not saved_path.is_file():
        raise FileNotFoundError(f"cannot resume: {saved_path} not found (is {out} a run dir?)")
    saved = load_config(path=saved_path).resolved()
    if epochs is not None:
        saved = saved.replace(epochs=epochs)
    if config is None:
        return saved
    config.validate()
    diff = config_differences(saved, config if epochs is None else config.replace(epochs=epochs))
    if diff:
        raise ValueError(f"cannot resume {out} with a different config (differs in: "
                         f"{', '.join(diff)}); resume without a config or start a new run")
    return saved.replace(device=config.device, deterministic=config.deterministic)


def _finished(out: Path, cfg: TrainConfig) -> bool:
    status = read_status(out) or {}
    return status.get("state") == "finished" and status.get("epoch") == cfg.epochs


def _open_on_every_rank(run: RunWriter, info: D.DistInfo) -> None:
    """Rank 0 claims the directory; the other ranks learn whether it could (none waits alone)."""
    error: BaseException | None = None
    try:
        run.open()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks know
        error = exc
    if info.distributed:
        flag = torch.tensor([0.0 if error is None else 1.0], device=info.device)
        D.all_reduce_sum(flag, info)
        if error is None and float(flag[0]) > 0:
            raise RuntimeError("rank 0 could not open the run directory (see its error)")
    if error is not None:
        raise error


def _load_data(cfg: TrainConfig, info: D.DistInfo):
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
    try:
        model = build_model(cfg.model, input_shape=tuple(train_ds.input_shape),
                            num_classes=train_ds.num_classes, width=cfg.width, depth=cfg.depth,
                            batchnorm=cfg.batchnorm,
                            fixed_etf_classifier=cfg.fixed_etf_classifier,
                            seed=cfg.seed).to(device)
    except (RuntimeError, MemoryError) as exc:  # an absurd --width: the allocator said no
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise ValueError(f"the {cfg.model} with width {cfg.width} and depth {cfg.depth} does "
                         f"not fit in memory on {device}; choose a smaller --width or --depth"
                         ) from None
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


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic torch algorithms for the run (opt-in: CPU runs with a seed are
    reproducible without it), the previous settings restored afterwards."""
    if not enabled:
        yield
        return
    restore = (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled(),
               torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(restore[0], warn_only=restore[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = restore[2:]


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop like Ctrl-C (status written, lock released)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like SIGINT for the run (main thread only; the old handler restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- progress


def _progress_bar(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # only when a bar is shown

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
