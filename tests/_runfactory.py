"""Write synthetic but realistic run directories (the format of docs/architecture.md) for tests.

Measurements at log-spaced epochs, training error reaching zero part way (the TPT onset),
collapse measures decaying like power laws, and snapshots whose features shrink onto class
means that converge to a simplex ETF while the classifier rows line up with them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from ncollapse.geometry import simplex_etf

NC_FIELDS = (
    "nc1", "nc1_trace_ratio", "cdnv", "equinorm_means", "equinorm_weights", "equiangular_means",
    "equiangular_weights", "maxangle_means", "maxangle_weights", "etf_error_means",
    "etf_error_weights", "self_duality", "self_duality_etf_error", "ncc_mismatch", "accuracy",
    "bias_collapse",
)
WEIGHT_FIELDS = ("equinorm_weights", "equiangular_weights", "maxangle_weights",
                 "etf_error_weights", "self_duality", "self_duality_etf_error", "ncc_mismatch",
                 "bias_collapse")


def measurement_epochs(epochs: int, count: int) -> list[int]:
    """About ``count`` log-spaced epochs in 1..epochs, always including the last."""
    raw = np.unique(np.round(np.logspace(0, np.log10(epochs), count)).astype(int))
    return sorted(set(raw.tolist()) | {epochs})


def train_error_at(epoch: int, onset: int) -> float:
    """Training error falling to exactly zero at ``onset`` and staying there."""
    if epoch >= onset:
        return 0.0
    return round(0.6 * (1.0 - np.log(epoch) / np.log(onset)) ** 1.5 + 0.01, 6)


def nc_row(epoch: int, num_classes: int, *, scale: float, with_weights: bool,
           num_samples: int, dim: int, speed: float = 1.0) -> dict[str, Any]:
    """Collapse measures decaying like power laws of epoch**speed (scale > 1: test set)."""
    t = float(epoch) ** speed
    row: dict[str, Any] = {
        "nc1": scale * 5.0 * t ** -1.3,
        "nc1_trace_ratio": scale * 2.0 * t ** -1.3,
        "cdnv": scale * 0.8 * t ** -1.2,
        "equinorm_means": 0.4 * t ** -0.6,
        "equinorm_weights": 0.3 * t ** -0.7,
        "equiangular_means": 0.35 * t ** -0.5,
        "equiangular_weights": 0.25 * t ** -0.6,
        "maxangle_means": 0.3 * t ** -0.5,
        "maxangle_weights": 0.2 * t ** -0.6,
        "etf_error_means": 0.5 * t ** -0.5,
        "etf_error_weights": 0.4 * t ** -0.6,
        "self_duality": 1.2 * t ** -0.8,
        "self_duality_etf_error": 0.6 * t ** -0.6,
        "ncc_mismatch": min(1.0, scale * 0.3 * t ** -0.9),
        "accuracy": 1.0 - min(0.9, scale * 0.5 * t ** -0.8),
        "bias_collapse": 0.5 * t ** -0.5,
        "num_classes": num_classes,
        "num_samples": num_samples,
        "dim": dim,
    }
    if not with_weights:
        for key in WEIGHT_FIELDS:
            row[key] = None
    return row


def snapshot_arrays(epoch: int, *, num_classes: int, dim: int, per_class: int,
                    seed: int = 0, with_bias: bool = True) -> dict[str, np.ndarray]:
    """Features collapsing onto class means that converge to a simplex ETF (fixed seed)."""
    rng = np.random.default_rng(seed)
    etf = simplex_etf(num_classes, dim, seed=seed)
    mean_noise = rng.standard_normal((num_classes, dim))
    weight_noise = rng.standard_normal((num_classes, dim))
    base = rng.standard_normal((num_classes * per_class, dim))
    offset = rng.standard_normal(dim)
    t = float(epoch)
    norm = 1.0 + 2.0 * np.log1p(t)
    means = norm * (etf + 0.8 * t ** -0.6 * mean_noise) + offset
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    features = means[labels] + norm * 1.5 * t ** -0.6 * base
    weight = 0.5 * norm * etf + 0.8 * t ** -0.7 * weight_noise
    within = float(np.mean(np.sum((features - means[labels]) ** 2, axis=1)))
    between = float(np.mean(np.sum((means - means.mean(axis=0)) ** 2, axis=1)))
    out = {
        "features": features.astype(np.float32),
        "labels": labels,
        "means": means.astype(np.float64),
        "global_mean": features.mean(axis=0).astype(np.float64),
        "weight": weight.astype(np.float64),
        "epoch": np.asarray(epoch, dtype=np.int64),
        "nc1": np.asarray(within / between, dtype=np.float64),
    }
    if with_bias:
        out["bias"] = (0.1 * t ** -0.5 * rng.standard_normal(num_classes)).astype(np.float64)
    return out


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def make_run(path: Path, *, classes: int = 4, dim: int = 12, epochs: int = 60,
             measurements: int = 14, per_class: int = 12, onset: int | None = None,
             with_weights: bool = True, with_test: bool = True, crash_at: int | None = None,
             truncate_last_line: bool = False, snapshots: bool = True, seed: int = 0,
             loss: str = "ce", speed: float = 1.0, write_config: bool = True) -> Path:
    """Write a run directory at ``path`` and return it.

    ``crash_at``: the run failed after that epoch (status "failed", later rows absent).
    ``truncate_last_line``: metrics.jsonl ends in half a JSON object, as after a crash.
    ``speed``: how fast the curves fall (the exponents of the power laws are multiplied by it).
    ``write_config=False`` keeps an existing config.toml.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    onset = onset if onset is not None else max(2, epochs // 4)
    last = crash_at if crash_at is not None else epochs
    n_train = classes * 50
    config = {
        "run": {"seed": seed, "preset": "synthetic", "device": "cpu", "name": path.name,
                "versions": {"ncollapse": "test", "torch": "none"}},
        "data": {"dataset": "synthetic", "num_classes": classes, "train_per_class": 50},
        "model": {"arch": "mlp", "width": 64},
        "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "epochs": epochs, "batch_size": 32, "loss": loss},
        "tracking": {"measurements": measurements, "snapshot_per_class": per_class},
    }
    if write_config:
        (path / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")

    epoch_rows = []
    for e in range(1, last + 1):
        epoch_rows.append({"epoch": e, "lr": 0.05, "train_loss": 2.0 * e ** (-1.1 * speed),
                           "train_error": train_error_at(e, onset), "time": 0.1 * e})
    (path / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epoch_rows))

    rows = []
    for e in measurement_epochs(epochs, measurements):
        if e > last:
            break
        row: dict[str, Any] = {
            "epoch": e, "step": e * 10, "lr": 0.05, "time": 0.1 * e,
            "train_loss": 2.0 * e ** (-1.1 * speed), "train_error": train_error_at(e, onset),
            "test_loss": 0.5 + 1.5 * e ** -0.8 if with_test else None,
            "test_accuracy": 0.9 - 0.5 * e ** -0.8 if with_test else None,
            "train": nc_row(e, classes, scale=1.0, with_weights=with_weights,
                            num_samples=n_train, dim=dim, speed=speed),
        }
        if with_test:
            row["test"] = nc_row(e, classes, scale=3.0, with_weights=with_weights,
                                 num_samples=classes * 20, dim=dim, speed=speed)
        if loss == "mse":
            row["mse_decomposition"] = {"loss": 0.5 * e ** -0.5, "nc1": 0.3 * e ** -0.6,
                                        "nc2_3": 0.2 * e ** -0.5, "ls_perp": 1e-4 * e ** -0.5}
        rows.append(row)
        if snapshots:
            arrays = snapshot_arrays(e, num_classes=classes, dim=dim, per_class=per_class,
                                     seed=seed)
            if not with_weights:
                arrays.pop("weight")
                arrays.pop("bias")
            (path / "snapshots").mkdir(exist_ok=True)
            np.savez(path / "snapshots" / f"epoch_{e:05d}.npz", **arrays)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if truncate_last_line and rows:
        text = text[: len(text) - len(json.dumps(rows[-1])) // 2 - 1]
    (path / "metrics.jsonl").write_text(text)
    flat = [flatten(r) for r in rows]
    columns = sorted({k for r in flat for k in r}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in flat:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    (path / "metrics.csv").write_text(buf.getvalue())

    tpt = onset if onset <= last else None
    status = {"state": "failed" if crash_at is not None else "finished", "epoch": last,
              "epochs": epochs, "tpt_onset_epoch": tpt,
              "message": f"loss became NaN at epoch {last + 1}; lower the learning rate"
              if crash_at is not None else None,
              "updated": "2026-01-01T00:00:00+00:00"}
    (path / "status.json").write_text(json.dumps(status))
    return path
