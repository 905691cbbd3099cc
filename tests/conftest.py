"""Run directories for the reader tests (plots, report, animation, demo), made by the real
writers: :func:`write_run` logs measurements of synthetic collapsing features through
``ncollapse.RunWriter`` (so the values are known), and the session fixture ``trained_run`` is
a real short ``train()`` of the demo preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ncollapse import RunWriter, measure
from ncollapse.config import TrainConfig, load_config
from ncollapse.geometry import simplex_etf
from ncollapse.training import measurement_epochs, train

#: A real training run small enough for every test session (digits, a small MLP).
TRAINED = {"epochs": 30, "per_class": 30, "width": 64, "depth": 2, "batch_size": 32,
           "num_measurements": 8,
           "snapshot_per_class": 6, "checkpoint_every": 10}


@dataclass
class Written:
    """A run directory written by :func:`write_run` and what was logged into it."""

    path: Path
    config: TrainConfig
    epochs: list[int]  # the measurement epochs logged
    onset: int
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> logged row
    train_error: dict[int, float] = field(default_factory=dict)  # per epoch


def train_error_at(epoch: int, onset: int) -> float:
    """A training error that falls to exactly zero at ``onset`` and stays there."""
    if epoch >= onset:
        return 0.0
    return round(0.6 * (1.0 - np.log(epoch) / np.log(onset)) ** 1.5 + 0.01, 6)


def collapsing_split(epoch: int, *, classes: int, dim: int, per_class: int, seed: int,
                     noise: float = 1.0) -> dict[str, np.ndarray]:
    """Features that shrink onto class means converging to a simplex ETF as ``epoch`` grows,
    with a classifier lining up with them (fixed seed)."""
    rng = np.random.default_rng(seed)
    etf = simplex_etf(classes, dim, seed=seed)
    mean_noise = rng.standard_normal((classes, dim))
    weight_noise = rng.standard_normal((classes, dim))
    offset = rng.standard_normal(dim)
    bias_noise = rng.standard_normal(classes)
    sample_rng = np.random.default_rng([seed, int(noise * 1000), epoch])
    t = float(epoch)
    norm = 1.0 + 2.0 * np.log1p(t)
    means = norm * (etf + 0.8 * t ** -0.6 * mean_noise) + offset
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    base = sample_rng.standard_normal((classes * per_class, dim))
    features = means[labels] + noise * norm * 1.5 * t ** -0.6 * base
    return {"features": features.astype(np.float32), "labels": labels,
            "weight": 0.5 * norm * etf + 0.8 * t ** -0.7 * weight_noise,
            "bias": 0.1 * t ** -0.5 * bias_noise}


def write_run(path: Path, *, classes: int = 4, dim: int = 12, epochs: int = 60,
              measurements: int = 12, per_class: int = 12, onset: int | None = None,
              with_weights: bool = True, with_test: bool = True, crash_at: int | None = None,
              truncate_last_line: bool = False, snapshots: bool = True, seed: int = 0,
              loss: str = "ce", config: TrainConfig | None = None) -> Written:
    """Write a run directory with ``RunWriter`` as a training loop would: every epoch a row,
    at ``measurement_epochs`` the NC metrics (``ncollapse.measure``) of collapsing features
    and a snapshot. ``crash_at``: the loop raises after that epoch (the writer marks the run
    failed). ``truncate_last_line``: afterwards metrics.jsonl loses half its last line."""
    cfg = config or load_config(overrides={
        "dataset": "gaussian", "loss": loss, "epochs": epochs, "num_measurements": measurements,
        "snapshot_per_class": per_class if snapshots else 0, "measure_test": with_test,
        "seed": seed, "width": dim, "device": "cpu"})
    onset = onset if onset is not None else max(2, cfg.epochs // 4)
    measure_at = measurement_epochs(cfg.epochs, cfg.num_measurements)
    written = Written(path=Path(path), config=cfg, epochs=[], onset=onset)
    try:
        with RunWriter(path, cfg) as run:
            for epoch in range(1, cfg.epochs + 1):
                if crash_at is not None and epoch > crash_at:
                    raise RuntimeError("simulated crash")
                err = train_error_at(epoch, onset)
                written.train_error[epoch] = err
                if epoch in measure_at:
                    tr = collapsing_split(epoch, classes=classes, dim=dim,
                                          per_class=per_class, seed=seed)
                    w, b = (tr["weight"], tr["bias"]) if with_weights else (None, None)
                    row: dict[str, Any] = {
                        "step": 10 * epoch, "lr": cfg.lr, "train_loss": 2.0 * epoch ** -1.1,
                        "train_error": err,
                        "train": measure(tr["features"], tr["labels"], weight=w,
                                         bias=b).to_dict()}
                    if with_test:
                        te = collapsing_split(epoch, classes=classes, dim=dim,
                                              per_class=per_class // 2 + 1, seed=seed, noise=3.0)
                        row["test"] = measure(te["features"], te["labels"], weight=w,
                                              bias=b).to_dict()
                        row["test_loss"] = 0.5 + 1.5 * epoch ** -0.8
                        row["test_accuracy"] = 0.9 - 0.5 * epoch ** -0.8
                    if loss == "mse":
                        row["mse_decomposition"] = {
                            "loss": 0.5 * epoch ** -0.5, "nc1": 0.3 * epoch ** -0.6,
                            "nc2_3": 0.2 * epoch ** -0.5, "ls_perp": 1e-4 * epoch ** -0.5}
                    snap = None
                    if snapshots:
                        snap = {"features": tr["features"], "labels": tr["labels"]}
                        if with_weights:
                            snap.update(weight=tr["weight"], bias=tr["bias"])
                    run.log_measurement(epoch, snapshot=snap, **row)
                    written.epochs.append(epoch)
                    written.rows[epoch] = row
                run.log_epoch(epoch, lr=cfg.lr, train_loss=2.0 * epoch ** -1.1,
                              train_error=err)
    except RuntimeError as exc:
        if str(exc) != "simulated crash":
            raise
    if truncate_last_line:
        metrics = Path(path) / "metrics.jsonl"
        text = metrics.read_text()
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        metrics.write_text(text[: len(text) - len(last) // 2 - 1])
    return written


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A real ``train()`` of the demo preset, shortened (digits, ~3 s on one core)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(load_config(preset="demo", overrides=TRAINED), out=out, progress=False)
    return out
