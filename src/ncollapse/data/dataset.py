"""The in-memory dataset object, class counts, and balanced / imbalanced subsets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IMBALANCE_PROFILES", "SPLITS", "ClassificationDataset", "Splits", "check_choice",
           "class_counts", "imbalanced_counts", "subset_indices"]

SPLITS = ("train", "test")
IMBALANCE_PROFILES = (None, "step", "exp")

#: Raw arrays of every split a loader read: ``{split: (inputs, targets)}``.
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ValueError naming ``key``, ``value`` and the valid ``choices`` unless it is one."""
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; valid choices: "
                         + ", ".join(repr(c) for c in choices))


class ClassificationDataset(Dataset):
    """In-memory classification data: ``dataset[i] == (inputs[i], targets[i])``.

    Attributes: ``inputs`` (N, *input_shape) float32, ``targets`` (N,) int64, ``num_classes``,
    ``input_shape`` (tuple), ``class_names`` (list of str), ``name``, ``split``, and
    ``normalization`` = (mean, std) float64 arrays used to standardise the inputs, or None.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, num_classes: int,
                 class_names: Sequence[str], name: str, split: str,
                 normalization: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets differ in length: {inputs.shape[0]} vs {targets.shape[0]}"
            )
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.inputs = inputs.to(torch.float32).contiguous()
        self.targets = targets.to(torch.int64).contiguous()
        if self.targets.numel() and (
            int(self.targets.min()) < 0 or int(self.targets.max()) >= num_classes
        ):
            raise ValueError(f"targets must lie in [0, {num_classes}), "
                             f"got range [{int(self.targets.min())}, {int(self.targets.max())}]")
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in class_names]
        self.name = name
        self.split = split
        self.normalization = normalization

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.inputs.shape[1:])

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def class_counts(self) -> list[int]:
        """Number of samples of each class, length ``num_classes``."""
        return class_counts(self.targets, self.num_classes)

    def __repr__(self) -> str:
        return (f"ClassificationDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def class_counts(targets: Any, num_classes: int) -> list[int]:
    """Number of samples of each class in ``targets``."""
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    return [int(v) for v in np.bincount(t, minlength=num_classes)[:num_classes]]


# ---------------------------------------------------------------------------------------------
# Subsets: balanced and imbalanced


def imbalanced_counts(n: int, num_classes: int, profile: str | None, ratio: float) -> list[int]:
    """Samples per class for an imbalance profile with largest class ``n`` and ratio R ≥ 1.

    - ``None``: n for every class.
    - ``"step"``: the first ⌊C/2⌋ classes (majority) keep n, the others get ⌊n/R⌋.
    - ``"exp"``: class c (0-based) gets ⌊n·R^(−c/(C−1))⌋, from n down to ⌊n/R⌋.
    Every class keeps at least one sample.
    """
    check_choice("imbalance", profile, IMBALANCE_PROFILES)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not np.isfinite(ratio) \
            or ratio < 1:
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if profile is None:
        return [n] * num_classes
    if profile == "step":
        majority = max(1, num_classes // 2)
        return [n if c < majority else max(1, int(n / ratio)) for c in range(num_classes)]
    if num_classes == 1:
        return [n]
    return [max(1, int(n * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def subset_indices(targets: Any, counts: Sequence[int], *, seed: int | None = 0) -> np.ndarray:
    """Indices taking ``counts[c]`` samples of every class c, in increasing order.

    ``seed=None`` takes the first samples of each class in dataset order; an int takes a
    random choice, the same for the same seed. Raises ValueError if a class has too few.
    """
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    rng = None if seed is None else np.random.default_rng(seed)
    chosen = []
    for c, k in enumerate(counts):
        idx = np.flatnonzero(t == c)
        if k > idx.size:
            raise ValueError(
                f"class {c} has only {idx.size} samples but {k} were requested; "
                "lower per_class (or the imbalance ratio)"
            )
        if rng is not None:
            idx = rng.permutation(idx)
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
