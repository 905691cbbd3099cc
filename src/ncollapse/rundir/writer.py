"""Writing a run directory: the one writer behind ``train()``, the demo, the tests, and a user's
own training loop.

A plain loop writes a run directory that ``ncollapse plot``, ``animate`` and ``report`` read::

    from ncollapse import RunWriter, measure

    with RunWriter("runs/mine", {"optim": {"lr": 0.1, "epochs": 50}}, epochs=50) as run:
        for epoch in range(1, 51):
            loss = train_one_epoch(...)
            run.log_epoch(epoch, train_loss=loss, lr=0.1)
            if epoch % 10 == 0:
                feats, labels = features_of(train_set)
                m = measure(feats, labels, weight=model.fc.weight)
                run.log_measurement(epoch, train=m, snapshot={"features": feats[:200],
                                                              "labels": labels[:200],
                                                              "weight": model.fc.weight})

Leaving the ``with`` block normally marks the run finished; an exception marks it failed with
the reason. Every file is replaced atomically; snapshots are written in a background thread and
every flush waits for them, so ``metrics.jsonl`` never lists a measurement whose snapshot is
not on disk.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from ncollapse import __version__
from ncollapse.config import TrainConfig, save_config
from ncollapse.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
)
from ncollapse.rundir.layout import (
    CONFIG,
    EPOCHS,
    LOCK,
    METRICS,
    METRICS_CSV,
    SNAPSHOTS,
    STATUS,
    is_run_dir,
    snapshot_name,
)
from ncollapse.rundir.lock import RunLock
from ncollapse.rundir.reader import read_jsonl

__all__ = ["RunExists", "RunWriter", "metrics_csv", "snapshot_arrays"]

#: The log files are rewritten at least this often (seconds), and at every explicit flush.
FLUSH_SECONDS = 5.0

#: The fields every measurement row carries (None when not measured), in this order.
ROW_FIELDS = ("epoch", "step", "lr", "time", "train_loss", "train_error", "test_loss",
              "test_accuracy", "train", "test")


class RunExists(ValueError):
    """The output directory already holds a run, or files that are not a run's."""


class RunWriter:
    """Writes one run directory: config, per-epoch rows, measurements, snapshots, status.

    ``config`` is a :class:`~ncollapse.config.TrainConfig` or any mapping of plain values
    (nested mappings become TOML tables) recorded as ``config.toml``; ``epochs`` the planned
    number of epochs (default: the config's). ``resume=True`` continues the run already in
    ``path`` (see :meth:`restore`); otherwise ``path`` must be new or empty. While open, the
    writer holds the directory's lock: a second writer fails at once naming this process.
    ``enabled=False`` (ranks other than 0 under DDP) makes every method a no-op.
    """

    def __init__(self, path: str | Path, config: TrainConfig | Mapping[str, Any] | None = None,
                 *, epochs: int | None = None, resume: bool = False, enabled: bool = True,
                 run_info: Mapping[str, Any] | None = None,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.path = Path(path)
        self.config = config
        if epochs is None and isinstance(config, TrainConfig):
            epochs = config.epochs
        self.total_epochs = epochs
        self.resume = resume
        self.enabled = enabled
        self.run_info = dict(run_info or {})
        self.flush_seconds = flush_seconds
        self.epochs: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.tpt_onset: int | None = None
        self.elapsed_before = 0.0  # seconds of training before this process (resume)
        self._t0 = time.perf_counter()
        self._last_flush = self._t0
        self._lock = RunLock(self.path)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[int, Future]] = []
        self._opened = False
        self._closed = False
        self.written = False  # whether this writer has written anything yet

    # ------------------------------------------------------------------ open / close

    def open(self) -> RunWriter:
        """Take the lock and, for a new run, write ``config.toml`` and a "running" status.

        Raises :class:`RunExists` when a new run's ``path`` holds a run or files that are not a
        run's, :class:`~ncollapse.rundir.lock.RunLocked` when another process writes there.
        """
        if self._opened or not self.enabled:
            self._opened = True
            return self
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunExists(f"{path} exists and is not a directory; choose another --out")
        if self.resume:
            if not (path / CONFIG).is_file():
                raise FileNotFoundError(f"cannot resume: {path / CONFIG} not found "
                                        f"(is {path} a run directory?)")
            self._lock.acquire()
        else:
            if (path / LOCK).is_file():  # a run's folder: name a live holder before anything
                self._lock.acquire()
            try:
                _check_new(path)
            except BaseException:
                self._lock.release()
                raise
            path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            try:
                _check_new(path)  # another process may have written between check and lock
                self.write_config()
            except BaseException:
                self._lock.release()
                raise
        self._opened = True
        self._t0 = self._last_flush = time.perf_counter()
        if not self.resume:
            try:
                self.flush("running")
            except BaseException:  # e.g. no space left: the lock is not kept by a dead writer
                self._lock.release()
                raise
        return self

    def close(self, state: str = "finished", message: str | None = None,
              epoch: int | None = None) -> None:
        """Write everything with the final ``state``, stop the snapshot thread, drop the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.enabled and self._opened:
                self.flush(state, message, epoch=epoch)
        finally:
            self._shutdown_pool()
            self._lock.release()

    def abandon(self) -> None:
        """Stop without writing anything more (e.g. a resume refused before it began)."""
        self._closed = True
        self._shutdown_pool()
        self._lock.release()

    def __enter__(self) -> RunWriter:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close("finished")
        elif not self._closed:
            done = self.last_epoch
            where = f"at epoch {done}" if done is not None else "before the first epoch"
            detail = f": {exc}" if str(exc) else ""
            self.close("failed", f"stopped {where} by {exc_type.__name__}{detail}")

    # ------------------------------------------------------------------ logging

    def log_epoch(self, epoch: int, *, lr: float | None = None, train_loss: float | None = None,
                  train_error: float | None = None, time: float | None = None,
                  **extra: Any) -> None:
        """Record one epoch (``epochs.jsonl``); a ``train_error`` of 0 marks the TPT onset."""
        if not self.enabled:
            return
        row = {"epoch": int(epoch), "lr": lr, "train_loss": train_loss,
               "train_error": train_error, "time": self.elapsed if time is None else time,
               **extra}
        self.epochs.append(row)
        self._note_error(epoch, train_error)
        self._maybe_flush()

    def log_measurement(self, epoch: int, *, train: Any = None, test: Any = None,
                        snapshot: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Record one measurement (``metrics.jsonl``/``.csv``) and optionally its snapshot.

        ``train``/``test``: the NC metrics of each split (an ``NCMetrics`` or a mapping).
        ``fields``: ``step``, ``lr``, ``time``, ``train_loss``, ``train_error``, ``test_loss``,
        ``test_accuracy`` and any extra JSON-able entries (e.g. ``mse_decomposition``).
        ``snapshot``: arrays for the animation, see :func:`snapshot_arrays`.
        """
        if not self.enabled:
            return
        row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        row.update(fields)
        row["epoch"] = int(epoch)
        if row["time"] is None:
            row["time"] = self.elapsed
        row["train"], row["test"] = _as_dict(train), _as_dict(test)
        if snapshot is not None:
            nc1 = (row["train"] or {}).get("nc1")
            arrays = snapshot_arrays(**{"nc1": nc1, **snapshot, "epoch": epoch})
            self._submit(int(epoch), self.path / SNAPSHOTS / snapshot_name(epoch), arrays)
        self.metrics.append(row)
        self._note_error(epoch, row.get("train_error"))
        self._maybe_flush()

    @property
    def elapsed(self) -> float:
        """Seconds of training so far (including those before a resume)."""
        return self.elapsed_before + time.perf_counter() - self._t0

    @property
    def last_epoch(self) -> int | None:
        """The last epoch logged (per-epoch rows or measurements), None before the first."""
        found = [r["epoch"] for r in self.epochs[-1:] + self.metrics[-1:]]
        return max(found) if found else None

    # ------------------------------------------------------------------ files

    def flush(self, state: str = "running", message: str | None = None, *,
              epoch: int | None = None) -> None:
        """Wait for the snapshots in flight, then rewrite the logs and the status atomically.

        A snapshot that could not be written (e.g. a full disk) takes its measurement row out
        of the history before the logs are written, and its error is raised afterwards (unless
        ``state`` is ``"failed"``: the run is ending for another reason).
        """
        if not self.enabled:
            return
        error = self._wait()
        self.written = True
        atomic_write_jsonl(self.path / EPOCHS, self.epochs)
        atomic_write_jsonl(self.path / METRICS, self.metrics)
        atomic_write_text(self.path / METRICS_CSV, metrics_csv(self.metrics))
        self.write_status(state, message, epoch=epoch)
        self._last_flush = time.perf_counter()
        if error is not None and state != "failed":
            raise error

    def write_status(self, state: str, message: str | None = None, *,
                     epoch: int | None = None) -> None:
        """Rewrite ``status.json`` (``epoch`` defaults to the last one logged, else 0)."""
        if not self.enabled:
            return
        if epoch is None:
            epoch = self.last_epoch or 0
        atomic_write_json(self.path / STATUS, {
            "state": state, "epoch": epoch, "epochs": self.total_epochs,
            "tpt_onset_epoch": self.tpt_onset, "message": message,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def restore(self, epoch: int, *, tpt_onset: int | None = None, elapsed: float = 0.0) -> None:
        """Continue from ``epoch`` (the last checkpoint; 0 for none): keep the rows up to it,
        delete later snapshots and half-written files, mark the run running again."""
        if not self.enabled:
            return
        self.tpt_onset = tpt_onset
        self.elapsed_before = float(elapsed)
        self._t0 = time.perf_counter()
        for name, rows in ((METRICS, self.metrics), (EPOCHS, self.epochs)):
            rows.clear()
            if (self.path / name).is_file():
                rows.extend(r for r in read_jsonl(self.path / name, [])
                            if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch)
        snapshots = self.path / SNAPSHOTS
        if snapshots.is_dir() and not snapshots.is_symlink():
            for snap in snapshots.glob("epoch_*.npz"):
                number = snap.stem.split("_")[1]
                if number.isdigit() and int(number) > epoch:
                    snap.unlink()
            for tmp in snapshots.glob(".epoch_*.npz.*.tmp"):  # a write cut short
                tmp.unlink(missing_ok=True)
        self.flush("running", epoch=epoch)

    # ------------------------------------------------------------------ internals

    def write_config(self) -> None:
        """(Re)write ``config.toml`` from the writer's config."""
        if not self.enabled:
            return
        self.written = True
        run_info = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **self.run_info}
        if isinstance(self.config, TrainConfig):
            save_config(self.config, self.path / CONFIG, extra_run=run_info)
            return
        doc = _toml_ready(dict(self.config or {}))
        run = doc.setdefault("run", {})
        if isinstance(run, dict):
            run.update(_toml_ready(run_info))
        doc["versions"] = {"ncollapse": __version__}  # marks the folder as a run of ours
        try:
            text = tomli_w.dumps(doc)
        except TypeError as exc:
            raise ValueError(f"the run config cannot be written as TOML ({exc}); pass plain "
                             "numbers, strings, booleans, lists and tables") from None
        atomic_write_text(self.path / CONFIG, text)

    def _note_error(self, epoch: int, error: Any) -> None:
        if self.tpt_onset is None and error is not None and error == 0:
            self.tpt_onset = int(epoch)

    def _maybe_flush(self) -> None:
        if time.perf_counter() - self._last_flush >= self.flush_seconds:
            self.flush("running")

    def _submit(self, epoch: int, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncollapse-write")
        self._pending.append((epoch, self._pool.submit(_save_npz, path, arrays)))

    def _wait(self) -> BaseException | None:
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for epoch, future in pending:
            exc = future.exception()
            if exc is not None:
                self.metrics = [r for r in self.metrics if r["epoch"] != epoch]
                error = error or exc
        return error

    def _shutdown_pool(self) -> None:
        self._wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def snapshot_arrays(features: Any, labels: Any, *, means: Any = None, global_mean: Any = None,
                    weight: Any = None, bias: Any = None, num_classes: int | None = None,
                    epoch: int | None = None, nc1: float | None = None) -> dict[str, np.ndarray]:
    """The arrays of one snapshot file (copies): ``features`` (n, d) float32, ``labels`` (n,)
    int64, class ``means`` (C, d) float64 (computed from these features when not given),
    ``global_mean``, the classifier ``weight``/``bias`` when known, ``epoch`` and ``nc1``."""
    feats = _numpy(features).astype(np.float32)
    ys = _numpy(labels).astype(np.int64).reshape(-1)
    if feats.ndim != 2 or len(feats) != len(ys):
        raise ValueError(f"snapshot features must be (n, d) with one label per row; got "
                         f"features {feats.shape} and labels {ys.shape}")
    if means is None:
        c = int(num_classes if num_classes is not None else (ys.max() + 1 if len(ys) else 0))
        sums = np.zeros((c, feats.shape[1]))
        np.add.at(sums, ys, feats.astype(np.float64))
        counts = np.bincount(ys, minlength=c).astype(np.float64)
        means = sums / np.maximum(counts, 1)[:, None]
    out = {"features": feats, "labels": ys, "means": _numpy(means).astype(np.float64)}
    if global_mean is None:
        global_mean = feats.astype(np.float64).mean(axis=0) if len(feats) else \
            np.zeros(feats.shape[1])
    out["global_mean"] = _numpy(global_mean).astype(np.float64)
    if weight is not None:
        out["weight"] = _numpy(weight).astype(np.float64)
    if bias is not None:
        out["bias"] = _numpy(bias).astype(np.float64)
    if epoch is not None:
        out["epoch"] = np.asarray(int(epoch), dtype=np.int64)
    out["nc1"] = np.asarray(math.nan if nc1 is None else float(nc1), dtype=np.float64)
    return out


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


def _check_new(path: Path) -> None:
    """A new run goes into a new or empty folder, never over a run or a user's files."""
    if not path.exists():
        return
    if is_run_dir(path):
        raise RunExists(f"{path} already holds a run; continue it with --resume {path} "
                        "or choose another --out")
    others = sorted(p.name for p in path.iterdir() if p.name != LOCK)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunExists(f"{path} is not empty and not a run directory (holds {shown}); "
                        "choose a new or empty folder for --out")


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_dict(metrics: Any) -> dict[str, Any] | None:
    if metrics is None:
        return None
    if hasattr(metrics, "to_dict"):
        return dict(metrics.to_dict())
    if isinstance(metrics, Mapping):
        return dict(metrics)
    raise TypeError(f"metrics must be an NCMetrics or a mapping, got {type(metrics).__name__}")


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, on any device
        a = a.detach().cpu().double().numpy() if a.is_floating_point() else a.detach().cpu().numpy()
    return np.array(a, copy=True)


def _toml_ready(obj: Any) -> Any:
    """Drop None values (TOML has no null), recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _toml_ready(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_toml_ready(v) for v in obj if v is not None]
    return obj


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())

