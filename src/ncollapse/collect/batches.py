"""Batches in, features out: splitting batches, calling the model, pooling layer outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ncollapse.keys import INPUT_KEYS, LABEL_KEYS, pick_key

__all__ = ["POOLS", "Pool", "call_model", "eval_mode", "model_device",
           "pool_features", "split_batch", "to_device"]

#: How a layer's output (n, ...) becomes one feature vector per sample: "flatten" keeps every
#: entry, "avg"/"max" reduce over every dim after the channel dim 1 (PyTorch's layout of conv
#: maps (n, C, H, W) and Conv1d outputs (n, C, L)), or a callable (n, ...) -> (n, d).
POOLS = ("flatten", "avg", "max")
Pool = str | Callable[[torch.Tensor], torch.Tensor]


def split_batch(batch: Any, input_key: str | None, label_key: str | None) -> tuple[Any, Any]:
    """(inputs, labels) of a batch: a tuple/list (first two items) or a dict (by key)."""
    if isinstance(batch, Mapping):
        return (pick_key(batch, input_key, INPUT_KEYS, "inputs", "input_key=..."),
                pick_key(batch, label_key, LABEL_KEYS, "labels", "label_key=..."))
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        "each batch must be an (inputs, labels) tuple/list or a dict with input and label keys, "
        f"got {type(batch).__name__}"
    )


def to_device(x: Any, device: torch.device) -> Any:
    """``x`` with every tensor in it (also inside dicts, tuples, lists) moved to ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(**x)`` for a dict, ``model(*x)`` for a tuple/list, else ``model(x)``."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) are; the CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards every submodule's own train/eval flag comes back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


def check_pool(pool: Pool) -> None:
    if not callable(pool) and pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(map(repr, POOLS))} or a callable "
                         f"(n, ...) -> (n, d), got {pool!r}")


def pool_features(value: torch.Tensor, pool: Pool, name: str) -> torch.Tensor:
    """One row per sample from a layer's output (n, ...), as ``pool`` says (see ``POOLS``)."""
    if callable(pool):
        out = pool(value)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != value.shape[0]:
            raise ValueError(f"the pool callable must return (n, d) = ({value.shape[0]}, d) for "
                             f"layer {name!r}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)}")
        return out
    if value.ndim == 1:
        return value[:, None]
    if pool == "flatten" or value.ndim == 2:
        return value.flatten(1)
    dims = tuple(range(2, value.ndim))
    return value.mean(dim=dims) if pool == "avg" else value.amax(dim=dims)
