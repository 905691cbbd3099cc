"""Checkpoints: what is saved (model, optimiser, RNG streams, the config it was trained with),
when, and how a run is resumed from one — refusing a checkpoint whose config differs."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncollapse.config import TrainConfig
from ncollapse.io import atomic_torch_save, safe_torch_load
from ncollapse.rundir import CHECKPOINT, HOW_TO_RUN_KEYS, config_differences
from ncollapse.training.schedule import lr_at

__all__ = [
    "AUTO_CHECKPOINT_SECONDS",
    "checkpoint_due",
    "config_hash",
    "load_checkpoint",
    "save_checkpoint",
]

# With checkpoint_every = 0 ("auto") a checkpoint is written at the last epoch and otherwise
# once this many seconds have passed since the previous one.
AUTO_CHECKPOINT_SECONDS = 60.0


def checkpoint_due(cfg: TrainConfig, epoch: int, since: float) -> bool:
    """Whether to checkpoint after ``epoch``, ``since`` seconds after the previous one."""
    if epoch == cfg.epochs:
        return True
    if cfg.checkpoint_every > 0:
        return epoch % cfg.checkpoint_every == 0
    return since >= AUTO_CHECKPOINT_SECONDS


def _recorded_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as the checkpoint records it: what it computes (how-to-run keys left out)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in HOW_TO_RUN_KEYS}


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 of the config's computing keys (canonical JSON), stored in every checkpoint."""
    text = json.dumps(_recorded_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(run_dir: Path, cfg: TrainConfig, epoch: int, model: nn.Module,
                    opt: torch.optim.Optimizer, *, tpt_onset: int | None,
                    elapsed: float) -> None:
    """Write ``checkpoints/last.pt`` atomically: everything needed to continue after ``epoch``."""
    atomic_torch_save({
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        # The schedule is a pure function of the epoch (lr_at); recorded for readers.
        "scheduler": {"schedule": cfg.schedule, "last_epoch": epoch, "lr": lr_at(cfg, epoch)},
        "epoch": epoch,
        # The batch order of epoch e is a function of (seed, e) (DistributedSampler), so this
        # is the whole state of the data order.
        "sampler": {"seed": cfg.seed, "epoch": epoch},
        "rng": _rng_state(),
        "tpt_onset_epoch": tpt_onset,
        "elapsed": elapsed,
        "config": _recorded_config(cfg),
        "config_hash": config_hash(cfg),
    }, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path, cfg: TrainConfig, model: nn.Module,
                    opt: torch.optim.Optimizer, *, epochs_changed: bool = False
                    ) -> dict[str, Any] | None:
    """Restore model, optimiser and RNG streams from ``run_dir``'s checkpoint, after checking
    that it was written with ``cfg`` (the epoch count may differ when ``epochs_changed``).
    Returns the checkpoint (None when the run has none yet)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        ckpt = safe_torch_load(path, map_location="cpu")
    except ValueError as exc:
        raise ValueError(f"{path} is damaged or not a checkpoint of ncollapse ({exc.__cause__}); "
                         "delete checkpoints/ to start the run over, or train into a new --out"
                         ) from None
    if not isinstance(ckpt, Mapping) or not {"model", "optimizer", "epoch"} <= set(ckpt):
        raise ValueError(f"{path} is not a checkpoint of ncollapse (no model/optimizer/epoch); "
                         "delete checkpoints/ to start the run over")
    if "config_hash" in ckpt and ckpt["config_hash"] != config_hash(cfg):
        saved = dict(ckpt.get("config") or {})
        diff = config_differences(saved, _recorded_config(cfg))
        if epochs_changed:
            diff = [k for k in diff if k != "epochs"]
        if diff:
            shown = ", ".join(f"{k} ({saved.get(k)!r} -> {getattr(cfg, k, None)!r})"
                              for k in diff)
            hint = (" (to change the number of epochs, resume with --epochs N)"
                    if diff == ["epochs"] else "")
            raise ValueError(f"cannot resume {run_dir}: its config.toml differs from the one "
                             f"its checkpoint was trained with in {shown}{hint}; restore "
                             "config.toml or train a new run")
    epoch = int(ckpt["epoch"])
    if epoch > cfg.epochs:
        raise ValueError(f"cannot resume {run_dir} for {cfg.epochs} epochs: its checkpoint is "
                         f"at epoch {epoch} already")
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot resume {run_dir}: its checkpoint does not fit the model of "
                         f"config.toml ({first}); restore config.toml or train a new run"
                         ) from None
    _set_rng_state(ckpt["rng"])
    return dict(ckpt)


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
